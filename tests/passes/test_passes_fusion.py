"""O2/O3 passes: BatchNorm folding, Conv Mul/Add folding, FusedConv, MatMul+Add, layout chains."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import tuili
from tests.passes._util import F, check_against_ort, counts, model, optimized, ort_run, rng


def _bn_inits(c, seed=1):
    r = rng(seed)
    return {"scale": r.uniform(0.5, 2, c).astype(np.float32), "bias": r.standard_normal(c).astype(np.float32),
            "mean": r.standard_normal(c).astype(np.float32), "var": r.uniform(0.5, 2, c).astype(np.float32)}


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batchnorm_into_conv(with_bias):
    r = rng()
    inits = {"w": r.standard_normal((4, 3, 3, 3)).astype(np.float32), **_bn_inits(4)}
    conv_in = ["x", "w"]
    if with_bias:
        inits["b"] = r.standard_normal(4).astype(np.float32)
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3)]
    m = model(nodes, [("x", F, [2, 3, 5, 5])], [("y", F, [2, 4, 5, 5])], inits)
    g, _ = check_against_ort(m, {"x": r.standard_normal((2, 3, 5, 5)).astype(np.float32)}, rtol=1e-4, atol=1e-4)
    assert counts(g) == {"Conv": 1}


def test_fold_batchnorm_into_grouped_conv_transpose():
    r = rng(2)
    inits = {"w": r.standard_normal((4, 3, 3, 3)).astype(np.float32), **_bn_inits(6)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], group=2, strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"])]
    m = model(nodes, [("x", F, [1, 4, 4, 4])], [("y", F, [1, 6, 9, 9])], inits)
    g, _ = check_against_ort(m, {"x": r.standard_normal((1, 4, 4, 4)).astype(np.float32)}, rtol=1e-4, atol=1e-4)
    assert counts(g) == {"ConvTranspose": 1}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_batchnorm_into_gemm(trans_b):
    r = rng(3)
    w = r.standard_normal((6, 5) if trans_b else (5, 6)).astype(np.float32)
    inits = {"w": w, "c": r.standard_normal(6).astype(np.float32), **_bn_inits(6)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, alpha=0.5, beta=2.0),
             helper.make_node("BatchNormalization", ["g", "scale", "bias", "mean", "var"], ["y"])]
    m = model(nodes, [("x", F, [3, 5])], [("y", F, [3, 6])], inits)
    g, _ = check_against_ort(m, {"x": r.standard_normal((3, 5)).astype(np.float32)}, rtol=1e-4, atol=1e-4)
    assert counts(g) == {"Gemm": 1}


def test_batchnorm_on_shared_conv_output_is_not_folded():
    r = rng(4)
    inits = {"w": r.standard_normal((4, 3, 1, 1)).astype(np.float32), **_bn_inits(4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"]),
             helper.make_node("Relu", ["c"], ["z"])]
    m = model(nodes, [("x", F, [1, 3, 4, 4])], [("y", F, [1, 4, 4, 4]), ("z", F, [1, 4, 4, 4])], inits)
    g, _ = check_against_ort(m, {"x": r.standard_normal((1, 3, 4, 4)).astype(np.float32)}, rtol=1e-4, atol=1e-4)
    assert counts(g)["BatchNormalization"] == 1


def test_fold_per_channel_mul_add_into_conv():
    r = rng(5)
    inits = {"w": r.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "s": r.standard_normal((4, 1, 1)).astype(np.float32),
             "t": r.standard_normal((1, 4, 1, 1)).astype(np.float32),
             "full": r.standard_normal((4, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Mul", ["s", "c"], ["m"]),
             helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Mul", ["a", "full"], ["y"])]   # not per-channel: stays a Mul
    m = model(nodes, [("x", F, [2, 3, 5, 5])], [("y", F, [2, 4, 3, 3])], inits)
    g, _ = check_against_ort(m, {"x": r.standard_normal((2, 3, 5, 5)).astype(np.float32)}, rtol=1e-4, atol=1e-4)
    assert counts(g) == {"Conv": 1, "Mul": 1}


ACTIVATIONS = [
    ("Relu", {}, []), ("Sigmoid", {}, []), ("Tanh", {}, []), ("HardSwish", {}, []),
    ("LeakyRelu", {"alpha": 0.2}, []), ("LeakyRelu", {"alpha": 1.5}, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, []), ("Clip", {}, ["lo", "hi"]),
]


@pytest.mark.parametrize("op,attrs,extra", ACTIVATIONS, ids=[f"{a[0]}{i}" for i, a in enumerate(ACTIVATIONS)])
@pytest.mark.parametrize("residual", [False, True])
def test_fuse_conv_add_activation(op, attrs, extra, residual):
    r = rng(6)
    inits = {"w": r.standard_normal((8, 4, 3, 3)).astype(np.float32), "b": r.standard_normal(8).astype(np.float32),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1])]
    act_in = "c"
    if residual:
        nodes.append(helper.make_node("Add", ["z", "c"], ["a"]))
        act_in = "a"
    nodes.append(helper.make_node(op, [act_in, *extra], ["y"], **attrs))
    m = model(nodes, [("x", F, ["N", 4, 6, 6]), ("z", F, ["N", 8, 6, 6])], [("y", F, ["N", 8, 6, 6])], inits)
    feeds = {"x": r.standard_normal((2, 4, 6, 6)).astype(np.float32) * 3,
             "z": r.standard_normal((2, 8, 6, 6)).astype(np.float32)}
    g, _ = check_against_ort(m, feeds, rtol=1e-4, atol=1e-4)
    assert counts(g) == {"tuili::FusedConv": 1}
    node = g.nodes[0]
    assert node.attrs["activation"] == op and (len(node.inputs) == 4) == residual


def test_fused_conv_with_broadcasting_residual_and_depthwise():
    r = rng(7)
    inits = {"w": r.standard_normal((4, 1, 3, 3)).astype(np.float32), "bias": r.standard_normal((4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "z"], ["a"]),       # z (1, 4, 1, 1) broadcasts
             helper.make_node("Relu", ["a"], ["y"])]
    m = model(nodes, [("x", F, [1, 4, 5, 5]), ("z", F, [1, 4, 1, 1])], [("y", F, [1, 4, 5, 5])], inits)
    feeds = {"x": r.standard_normal((1, 4, 5, 5)).astype(np.float32),
             "z": r.standard_normal((1, 4, 1, 1)).astype(np.float32)}
    g, _ = check_against_ort(m, feeds, rtol=1e-4, atol=1e-4)
    assert counts(g) == {"tuili::FusedConv": 1}
    assert g.opset_imports.get("tuili") == 1


def test_conv_used_twice_is_not_fused():
    r = rng(8)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    m = model(nodes, [("x", F, [1, 2, 3, 3])], [("y", F, [1, 2, 3, 3]), ("c", F, [1, 2, 3, 3])],
              {"w": r.standard_normal((2, 2, 1, 1)).astype(np.float32)})
    g, _ = check_against_ort(m, {"x": r.standard_normal((1, 2, 3, 3)).astype(np.float32)})
    assert counts(g) == {"Conv": 1, "Relu": 1}


def test_matmul_add_becomes_gemm_when_legal_and_fused_matmul_otherwise():
    r = rng(9)
    inits = {"w": r.standard_normal((5, 6)).astype(np.float32), "b": r.standard_normal(6).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x2", "w"], ["m2"]), helper.make_node("Add", ["m2", "b"], ["y2"]),
             helper.make_node("MatMul", ["x3", "w"], ["m3"]), helper.make_node("Add", ["b", "m3"], ["y3"])]
    m = model(nodes, [("x2", F, [3, 5]), ("x3", F, ["B", 4, 5])], [("y2", F, [3, 6]), ("y3", F, ["B", 4, 6])], inits)
    feeds = {"x2": r.standard_normal((3, 5)).astype(np.float32), "x3": r.standard_normal((2, 4, 5)).astype(np.float32)}
    g, _ = check_against_ort(m, feeds, rtol=1e-5, atol=1e-5)
    assert counts(g) == {"Gemm": 1, "tuili::FusedMatMul": 1}
    # portable: standard ops only, and onnxruntime runs the result
    g2, _ = check_against_ort(m, feeds, allow_custom_ops=False)
    assert counts(g2) == {"Gemm": 1, "MatMul": 1, "Add": 1}
    got = ort_run(g2.to_proto(), feeds)
    for a, b in zip(got, ort_run(m, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_layout_chains_collapse_at_o3_only():
    nodes = [helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 2, 1, 3]),   # inverse: both vanish
             helper.make_node("Transpose", ["t2"], ["t3"], perm=[3, 0, 1, 2]),
             helper.make_node("Transpose", ["t3"], ["t4"], perm=[1, 2, 0, 3]),
             helper.make_node("Reshape", ["t4", "s1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "s2"], ["y"])]
    m = model(nodes, [("x", F, [2, 3, 4, 5])], [("y", F, [6, 20])],
              {"s1": np.array([-1, 5], np.int64), "s2": np.array([6, -1], np.int64)})
    feeds = {"x": rng(10).standard_normal((2, 3, 4, 5)).astype(np.float32)}
    g2, _ = check_against_ort(m, feeds, level=2)
    assert counts(g2) == {"Transpose": 4, "Reshape": 2}
    g3, _ = check_against_ort(m, feeds, level=3)
    assert counts(g3) == {"Transpose": 1, "Reshape": 1}


def test_reshape_with_zero_is_not_collapsed():
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r1"]), helper.make_node("Reshape", ["r1", "s2"], ["y"])]
    m = model(nodes, [("x", F, [2, 3, 4])], [("y", F, [6, 2, 2])],
              {"s1": np.array([6, 4], np.int64), "s2": np.array([0, 2, 2], np.int64)})
    g, _ = check_against_ort(m, {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}, level=3)
    assert counts(g) == {"Reshape": 2}


def test_subgraph_returning_an_outer_value_directly():
    """A branch may return an outer value as is (tuili accepts it; onnx's checker does not): the
    Identity producing that value must stay. Reference: tuili without optimization."""
    then_g = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, [3])])
    else_g = helper.make_graph([], "else", [], [helper.make_tensor_value_info("a", F, [3])])
    nodes = [helper.make_node("Identity", ["x"], ["a"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [3])],
                          [helper.make_tensor_value_info("y", F, [3])],
                          [helper.make_tensor("zero", F, [], [0.0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for x in (np.array([1.0, 2.0, 3.0], np.float32), np.array([-1.0, -2.0, 0.5], np.float32)):
        want = tuili.InferenceSession(m, opt_level=0).run(None, {"x": x})
        for level in (1, 2, 3):
            got = tuili.InferenceSession(m, opt_level=level).run(None, {"x": x})
            np.testing.assert_array_equal(got[0], want[0])
    og, _ = optimized(m, 3)
    assert counts(og)["Identity"] == 1


def test_float16_conv_relu():
    r = rng(11)
    H = TensorProto.FLOAT16
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    m = model(nodes, [("x", H, [1, 2, 4, 4])], [("y", H, [1, 2, 4, 4])],
              {"w": r.standard_normal((2, 2, 1, 1)).astype(np.float16)})
    x = r.standard_normal((1, 2, 4, 4)).astype(np.float16)
    want = tuili.InferenceSession(m, opt_level=0).run(None, {"x": x})[0]
    got = tuili.InferenceSession(m, opt_level=2).run(None, {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)


def test_gemm_constant_operands_precomputed_and_weight_transpose_folded():
    r = rng(12)
    inits = {"w": r.standard_normal((6, 5)).astype(np.float32), "c": r.standard_normal((1, 6)).astype(np.float32),
             "wt": r.standard_normal((4, 5)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.5, beta=3.0),
             helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),           # shares w: w itself unchanged
             helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wtt"], ["k"])]
    m = model(nodes, [("x", F, [3, 5])], [("g", F, [3, 6]), ("h", F, [3, 6]), ("k", F, [3, 4])], inits)
    g, report = check_against_ort(m, {"x": r.standard_normal((3, 5)).astype(np.float32)}, rtol=1e-5, atol=1e-5)
    assert counts(g) == {"Gemm": 2, "MatMul": 1}
    for node in g.nodes:
        if node.op_type == "Gemm":
            assert node.attrs.get("transB", 0) == 0 and node.attrs.get("alpha", 1.0) == 1.0
            assert node.attrs.get("beta", 1.0) == 1.0 and node.inputs[1].const.flags.c_contiguous
    assert report.by_pass()["gemm-weights"]["changed"] >= 1


@pytest.mark.parametrize("level", [1, 2])
def test_subgraphs_are_optimized_too(level):
    """If branches and a Loop body get the same passes; outer values they read survive."""
    r = rng(13)
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["xi"]),
         helper.make_node("Conv", ["xi", "w"], ["c"]),
         helper.make_node("Relu", ["c"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", F, [1, 2, 3, 3])])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", F, [], [2.0])),
         helper.make_node("Mul", ["k", "k"], ["k2"]),
         helper.make_node("Mul", ["x", "k2"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", F, [1, 2, 3, 3])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Neg", ["one"], ["m1"]),
         helper.make_node("Add", ["acc", "m1"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", F, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", F, [1, 2, 3, 3])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Loop", ["trips", "true", "r"], ["y"], body=body)]
    m = model(nodes, [("x", F, [1, 2, 3, 3])], [("y", F, [1, 2, 3, 3])],
              {"w": r.standard_normal((2, 2, 1, 1)).astype(np.float32), "zero": np.array(0.0, np.float32),
               "one": np.array(1.0, np.float32), "trips": np.array(3, np.int64), "true": np.array(True)})
    for sign in (1, -1):
        x = np.abs(r.standard_normal((1, 2, 3, 3))).astype(np.float32) * sign
        g, report = check_against_ort(m, {"x": x}, level=level)
    after = report.after
    assert after["Identity"] == 1  # the body's cond_in -> cond_out: a body input to a body output stays
    assert "Constant" not in after and "Neg" not in after
    assert after["Mul"] == 1 and after.get("tuili::FusedConv", 0) == (level >= 2)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("order", ["y_s", "s_y"])
def test_fuse_conv_swish(residual, order):
    """SiLU as exported by torch: Mul(y, Sigmoid(y)) after a Conv (and a residual Add)."""
    r = rng(14)
    inits = {"w": r.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": r.standard_normal(4).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    y = "c"
    if residual:
        nodes.append(helper.make_node("Add", ["c", "z"], ["a"]))
        y = "a"
    nodes += [helper.make_node("Sigmoid", [y], ["s"]),
              helper.make_node("Mul", [y, "s"] if order == "y_s" else ["s", y], ["m"]),
              helper.make_node("Neg", ["m"], ["out"])]          # a reader right after the pattern
    m = model(nodes, [("x", F, [2, 3, 5, 5]), ("z", F, [2, 4, 5, 5])], [("out", F, [2, 4, 5, 5])], inits)
    feeds = {"x": r.standard_normal((2, 3, 5, 5)).astype(np.float32) * 4,
             "z": r.standard_normal((2, 4, 5, 5)).astype(np.float32)}
    g, _ = check_against_ort(m, feeds, rtol=1e-4, atol=1e-4)
    assert counts(g) == {"tuili::FusedConv": 1, "Neg": 1}
    assert g.nodes[0].attrs["activation"] == "Swish"


def test_swish_with_an_extra_reader_is_not_fused():
    r = rng(15)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["c", "s"], ["y"])]
    m = model(nodes, [("x", F, [1, 2, 3, 3])], [("y", F, [1, 2, 3, 3]), ("s", F, [1, 2, 3, 3])],
              {"w": r.standard_normal((2, 2, 1, 1)).astype(np.float32)})
    g, _ = check_against_ort(m, {"x": r.standard_normal((1, 2, 3, 3)).astype(np.float32)})
    assert counts(g) == {"Conv": 1, "Sigmoid": 1, "Mul": 1}
