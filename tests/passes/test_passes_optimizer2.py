"""Optimizer II passes: activation, LayerNorm and attention fusion, constant Reshape targets, Pad+Conv.
Each optimized graph runs in tuili matching onnxruntime on the original; --target onnx graphs (no
custom ops) also run in onnxruntime itself."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from ._util import F, check_against_ort, counts, model, ort_run, rng

X = rng(1).standard_normal((2, 3, 8)).astype(np.float32) * 3


def _c(name, value):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, F, [], [value]))


def _gelu_erf(order):
    nodes = [_c("s2", math.sqrt(2)), _c("one", 1.0), _c("half", 0.5),
             helper.make_node("Div", ["x", "s2"], ["t"]), helper.make_node("Erf", ["t"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"])]
    if order == 0:
        nodes += [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["half", "x"], ["m"]), helper.make_node("Mul", ["a", "m"], ["y"])]
    return nodes


def _gelu_tanh():
    return [_c("three", 3.0), _c("k", 0.044715), _c("r", math.sqrt(2 / math.pi)), _c("one", 1.0), _c("half", 0.5),
            helper.make_node("Pow", ["x", "three"], ["p"]), helper.make_node("Mul", ["p", "k"], ["pk"]),
            helper.make_node("Add", ["x", "pk"], ["inner"]), helper.make_node("Mul", ["inner", "r"], ["ir"]),
            helper.make_node("Tanh", ["ir"], ["t"]), helper.make_node("Add", ["one", "t"], ["a"]),
            helper.make_node("Mul", ["x", "half"], ["hx"]), helper.make_node("Mul", ["hx", "a"], ["y"])]


def _one_io(nodes, opset=17, shape=(2, 3, 8)):
    return model(nodes, [("x", F, list(shape))], [("y", F, list(shape))], opset=opset)


@pytest.mark.parametrize("order", [0, 1])
def test_gelu_erf_form(order):
    m = _one_io(_gelu_erf(order))
    g, _ = check_against_ort(m, {"x": X})
    assert counts(g) == {"com.microsoft::Gelu": 1}
    g, _ = check_against_ort(m, {"x": X}, allow_custom_ops=False)
    assert "Erf" in counts(g)  # no standard Gelu before opset 20: left as it is
    g, _ = check_against_ort(_one_io(_gelu_erf(order), opset=20), {"x": X}, allow_custom_ops=False)
    assert counts(g) == {"Gelu": 1}
    ort_run(g.to_proto(), {"x": X})


def test_gelu_tanh_form():
    g, _ = check_against_ort(_one_io(_gelu_tanh()), {"x": X}, atol=1e-5)
    assert counts(g) == {"com.microsoft::FastGelu": 1}
    g, _ = check_against_ort(_one_io(_gelu_tanh(), opset=20), {"x": X}, allow_custom_ops=False, atol=1e-5)
    assert counts(g) == {"Gelu": 1} and g.nodes[0].attrs["approximate"] == "tanh"


def test_silu_hardsigmoid_hardswish():
    silu = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])]
    g, _ = check_against_ort(_one_io(silu), {"x": X})
    assert counts(g) == {"com.microsoft::QuickGelu": 1}
    hs = [_c("three", 3.0), _c("zero", 0.0), _c("six", 6.0), helper.make_node("Add", ["x", "three"], ["a"]),
          helper.make_node("Clip", ["a", "zero", "six"], ["c"]), helper.make_node("Div", ["c", "six"], ["h"]),
          helper.make_node("Mul", ["x", "h"], ["y"])]
    g, _ = check_against_ort(_one_io(hs), {"x": X}, allow_custom_ops=False)
    assert counts(g) == {"HardSwish": 1}
    gate = hs[:-1] + [helper.make_node("Identity", ["h"], ["y"])]
    g, _ = check_against_ort(_one_io(gate), {"x": X}, allow_custom_ops=False)
    assert counts(g) == {"HardSigmoid": 1}


def test_layernorm_from_primitives():
    w = rng(2).standard_normal(8).astype(np.float32)
    b = rng(3).standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             _c("two", 2.0), _c("eps", 1e-5), helper.make_node("Pow", ["d", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]), helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["std"]), helper.make_node("Div", ["d", "std"], ["n"]),
             helper.make_node("Mul", ["n", "w"], ["nw"]), helper.make_node("Add", ["nw", "b"], ["y"])]
    m = model(nodes, [("x", F, [2, 3, 8])], [("y", F, [2, 3, 8])], {"w": w, "b": b}, opset=17)
    g, _ = check_against_ort(m, {"x": X}, allow_custom_ops=False)
    assert counts(g) == {"LayerNormalization": 1}
    ort_run(g.to_proto(), {"x": X})
    old = model(nodes, [("x", F, [2, 3, 8])], [("y", F, [2, 3, 8])], {"w": w, "b": b}, opset=13)
    g, _ = check_against_ort(old, {"x": X})
    assert "LayerNormalization" not in counts(g)  # the op does not exist at opset 13


@pytest.mark.parametrize("scale_op,masked", [("Div", True), ("Mul", False), (None, True)])
def test_attention_fusion(scale_op, masked):
    b, n, s, h = 2, 4, 5, 8
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["qk"])]
    last = "qk"
    if scale_op:
        nodes += [_c("c", 8 ** 0.5 if scale_op == "Div" else 8 ** -0.5), helper.make_node(scale_op, [last, "c"], ["sc"])]
        last = "sc"
    if masked:
        nodes.append(helper.make_node("Add", ["mask", last], ["mk"]))
        last = "mk"
    nodes += [helper.make_node("Softmax", [last], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = [("q", F, [b, n, s, h]), ("kt", F, [b, n, h, s]), ("v", F, [b, n, s, h])]
    feeds = {k: rng(i).standard_normal(shape).astype(np.float32) for i, (k, _, shape) in enumerate(inputs)}
    if masked:
        inputs.append(("mask", F, [b, 1, 1, s]))
        feeds["mask"] = np.where(rng(9).random((b, 1, 1, s)) < 0.3, -1e4, 0).astype(np.float32)
    m = model(nodes, inputs, [("y", F, [b, n, s, h])], opset=17)
    g, _ = check_against_ort(m, feeds)
    assert counts(g) == {"tuili::Attention": 1}
    g, _ = check_against_ort(m, feeds, allow_custom_ops=False)
    assert "tuili::Attention" not in counts(g)


def test_dynamic_reshape_target_becomes_constant():
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), _c("i0", 0.0),
             helper.make_node("Gather", ["shp", "zero"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
             helper.make_node("Concat", ["b1", "tail"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    nodes = [n for n in nodes if n.output[0] != "i0"]
    m = model(nodes, [("x", F, ["N", 3, 8])], [("y", F, ["N", 2, 12])],
              {"zero": np.array(0, np.int64), "ax0": np.array([0], np.int64), "tail": np.array([2, 12], np.int64)})
    g, _ = check_against_ort(m, {"x": X}, allow_custom_ops=False)
    assert counts(g) == {"Reshape": 1}
    assert g.nodes[0].inputs[1].const.tolist() == [0, 2, 12]
    ort_run(g.to_proto(), {"x": np.ones((5, 3, 8), np.float32)})


@pytest.mark.parametrize("opset", [10, 17])
def test_pad_folds_into_conv(opset):
    w = rng(4).standard_normal((4, 3, 3, 3)).astype(np.float32)
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    pad = (helper.make_node("Pad", ["x"], ["p"], pads=pads) if opset < 11
           else helper.make_node("Pad", ["x", "pads"], ["p"]))
    inits = {"w": w} if opset < 11 else {"w": w, "pads": np.array(pads, np.int64)}
    m = model([pad, helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 1, 1, 1])], [("x", F, [1, 3, 6, 6])],
              [("y", F, [1, 4, 8, 8])], inits, opset=opset)
    x = rng(5).standard_normal((1, 3, 6, 6)).astype(np.float32)
    g, _ = check_against_ort(m, {"x": x}, allow_custom_ops=False)
    assert counts(g) == {"Conv": 1} and g.nodes[0].attrs["pads"] == [2, 3, 3, 2]
    reflect = model([helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
                     helper.make_node("Conv", ["p", "w"], ["y"])], [("x", F, [1, 3, 6, 6])],
                    [("y", F, [1, 4, 7, 7])], {"w": w, "pads": np.array(pads, np.int64)}, opset=17)
    g, _ = check_against_ort(reflect, {"x": x}, allow_custom_ops=False)
    assert counts(g) == {"Pad": 1, "Conv": 1}


def test_double_is_an_ieee_float_and_fuses():
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])]
    m = model(nodes, [("x", TensorProto.DOUBLE, [4])], [("y", TensorProto.DOUBLE, [4])], opset=17)
    g, _ = check_against_ort(m, {"x": np.linspace(-3, 3, 4)})
    assert counts(g) == {"com.microsoft::QuickGelu": 1}
