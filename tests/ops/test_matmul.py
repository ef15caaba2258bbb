"""MatMul / Gemm / Einsum / Det against onnxruntime; MatMulInteger against the exact reference."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.ops._intref import assert_exact
from tests.ops._ortref import assert_same
from tuili.ops.registry import get_kernel

SETTINGS = settings(max_examples=30, deadline=None)


_check = partial(assert_same, opset=17, rtol=1e-4, atol=1e-4)


elems = st.floats(-2, 2, width=32)


def _arr(data, shape, dtype=np.float32, elements=elems):
    return data.draw(hnp.arrays(dtype, shape, elements=elements))


@SETTINGS
@given(st.data(), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from(["2d", "1d_left", "1d_right", "batched", "batched_2d_rhs", "broadcast_batch"]))
def test_matmul_vs_ort(data, m, k, n, kind):
    shapes = {
        "2d": ((m, k), (k, n)),
        "1d_left": ((k,), (k, n)),
        "1d_right": ((m, k), (k,)),
        "batched": ((2, 3, m, k), (2, 3, k, n)),
        "batched_2d_rhs": ((2, 3, m, k), (k, n)),
        "broadcast_batch": ((2, 1, m, k), (3, k, n)),
    }[kind]
    a, b = (_arr(data, s) for s in shapes)
    _check("MatMul", [a, b], opset=13)


@SETTINGS
@given(st.data(), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.booleans(), st.booleans(),
       st.sampled_from(["none", "scalar", "row", "col", "full"]), st.sampled_from([1.0, 0.5]), st.sampled_from([1.0, 0.0, 2.0]))
def test_gemm_vs_ort(data, m, k, n, ta, tb, c_kind, alpha, beta):
    a = _arr(data, (k, m) if ta else (m, k))
    b = _arr(data, (n, k) if tb else (k, n))
    c = {"none": None, "scalar": (1,), "row": (n,), "col": (m, 1), "full": (m, n)}[c_kind]
    c = None if c is None else _arr(data, c)
    _check("Gemm", [a, b, c], opset=13, transA=int(ta), transB=int(tb), alpha=alpha, beta=beta)


@SETTINGS
@given(st.data(), st.integers(1, 4), st.integers(1, 6), st.integers(1, 4), st.sampled_from(["none", "scalar", "vector"]))
def test_matmul_integer_exact(data, m, k, n, zp_kind):
    a = _arr(data, (m, k), np.uint8, st.integers(0, 255))
    b = _arr(data, (k, n), np.int8, st.integers(-128, 127))
    if zp_kind == "none":
        inputs = [a, b]
    elif zp_kind == "scalar":
        inputs = [a, b, np.array(12, np.uint8), np.array(-3, np.int8)]
    else:
        inputs = [a, b, np.array(7, np.uint8), _arr(data, (n,), np.int8, st.integers(-10, 10))]
    assert_exact("MatMulInteger", inputs, opset=10, weights=b)


EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ii->i", [(4, 4)]),
    ("ij->ji", [(3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("...ij,...jk", [(2, 3, 4), (2, 4, 2)]),
    ("bhqd, bhkd -> bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
]


@SETTINGS
@given(st.data(), st.sampled_from(EINSUMS))
def test_einsum_vs_ort(data, case):
    eq, shapes = case
    inputs = [_arr(data, s) for s in shapes]
    _check("Einsum", inputs, opset=12, equation=eq)


@SETTINGS
@given(st.data(), st.sampled_from([(3, 3), (2, 4, 4), (1,) + (2, 2)]))
def test_det_vs_ort(data, shape):
    x = _arr(data, shape)
    _check("Det", [x], opset=11, rtol=1e-3, atol=1e-3)


def test_gemm_keeps_float32_and_does_not_touch_inputs():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8)).astype(np.float32)
    b = rng.standard_normal((5, 8)).astype(np.float32)
    c = rng.standard_normal((5,)).astype(np.float32)
    keep = [a.copy(), b.copy(), c.copy()]
    y = get_kernel("Gemm", "", 13).fn(a, b, c, transB=1, alpha=2.0, beta=3.0)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, 2 * a @ b.T + 3 * c, rtol=1e-5, atol=1e-5)
    for x, k in zip((a, b, c), keep):
        np.testing.assert_array_equal(x, k)


def test_matmul_3d_by_2d_single_gemm_path_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 7, 16)).astype(np.float32)
    w = rng.standard_normal((16, 3)).astype(np.float32)
    y = get_kernel("MatMul", "", 13).fn(a, w)
    assert y.dtype == np.float32 and y.shape == (2, 7, 3)
    np.testing.assert_allclose(y, np.matmul(a, w), rtol=1e-5, atol=1e-5)
    # non-contiguous left operand takes the general path
    at = np.swapaxes(rng.standard_normal((2, 16, 7)).astype(np.float32), 1, 2)
    np.testing.assert_allclose(get_kernel("MatMul", "", 13).fn(at, w), np.matmul(at, w), rtol=1e-5, atol=1e-5)


def _nbits_model(k, n, block, bits, zp_kind, bias):
    from onnx import TensorProto, helper

    n_blocks = -(-k // block)
    rng = np.random.default_rng(k * 7 + n + bits)
    inits = [helper.make_tensor("b", TensorProto.UINT8, (n, n_blocks, block * bits // 8),
                                rng.integers(0, 256, (n, n_blocks, block * bits // 8)).astype(np.uint8).tobytes(), raw=True),
             helper.make_tensor("s", TensorProto.FLOAT, (n * n_blocks,), rng.uniform(0.01, 0.1, n * n_blocks).tolist())]
    names = ["a", "b", "s"]
    if zp_kind == "packed":
        zbytes = -(-n_blocks * bits // 8)
        inits.append(helper.make_tensor("z", TensorProto.UINT8, (n * zbytes,),
                                        rng.integers(0, 256, n * zbytes).astype(np.uint8).tobytes(), raw=True))
        names.append("z")
    elif zp_kind == "float":
        inits.append(helper.make_tensor("z", TensorProto.FLOAT, (n * n_blocks,), rng.uniform(0, 2 ** bits, n * n_blocks).tolist()))
        names.append("z")
    if bias:
        names += [""] * (4 - len(names)) + ["", "bias"]  # g_idx omitted
        inits.append(helper.make_tensor("bias", TensorProto.FLOAT, (n,), rng.standard_normal(n).tolist()))
    node = helper.make_node("MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("k,n,block,bits,zp_kind,bias", [
    (64, 8, 32, 4, "none", False), (80, 5, 32, 4, "packed", True), (96, 7, 64, 4, "float", False),
    (40, 3, 16, 8, "packed", False), (33, 4, 16, 4, "packed", True),
])
def test_matmul_nbits_matches_onnxruntime(k, n, block, bits, zp_kind, bias):
    import onnxruntime as ort

    import tuili

    model = _nbits_model(k, n, block, bits, zp_kind, bias)
    a = np.random.default_rng(k).standard_normal((2, 3, k)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    (want,) = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"a": a})
    (got,) = tuili.InferenceSession(model).run(None, {"a": a})
    assert got.shape == want.shape == (2, 3, n)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
