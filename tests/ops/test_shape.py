"""Shape kernels (tuili.ops.shape) against onnxruntime, plus the view contract."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tests.ops._ortref import assert_same, run_tuili
from tuili.errors import KernelError

SETTINGS = settings(max_examples=30, deadline=None)
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4)


def arr(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_reshape_matches_ort(shape, data):
    x = arr(shape)
    target = list(data.draw(st.permutations(shape)))
    # sprinkle a 0 (copy input dim) and a -1 (infer)
    if data.draw(st.booleans()) and len(target) <= len(shape):
        i = data.draw(st.integers(0, len(target) - 1))
        if target[i] == shape[i]:
            target[i] = 0
    j = data.draw(st.integers(0, len(target) - 1))
    if target[j] != 0:
        target[j] = -1
    assert_same("Reshape", [x, np.array(target, np.int64)], opset=14)


def test_reshape_allowzero_and_view():
    x = np.zeros((0, 3), np.float32)
    assert_same("Reshape", [x, np.array([3, 0], np.int64)], opset=14, allowzero=1)
    y = arr((2, 3, 4))
    out = run_tuili("Reshape", [y, np.array([0, -1], np.int64)], opset=13)[0]
    assert out.shape == (2, 12) and np.shares_memory(out, y)  # documented view
    with pytest.raises(KernelError, match="Reshape"):
        run_tuili("Reshape", [y, np.array([5, -1], np.int64)], opset=13)


def test_reshape_v1_attribute():
    x = arr((2, 6))
    (out,) = run_tuili("Reshape", [x], opset=1, shape=[3, 4])
    np.testing.assert_array_equal(out, x.reshape(3, 4))


@SETTINGS
@given(shape=shapes, data=st.data())
def test_transpose_matches_ort(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    use_default = data.draw(st.booleans())
    x = arr(shape)
    attrs = {} if use_default or not shape else {"perm": list(perm)}
    out = assert_same("Transpose", [x], **attrs)[0]
    assert out.flags.c_contiguous and not np.shares_memory(out, x)


@SETTINGS
@given(shape=st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=4), data=st.data(), opset=st.sampled_from([11, 13]))
def test_squeeze_unsqueeze_match_ort(shape, data, opset):
    x = arr(shape)
    ones = [i for i, d in enumerate(shape) if d == 1]
    axes = data.draw(st.lists(st.sampled_from(ones), unique=True)) if ones else []
    axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]
    if opset >= 13:
        assert_same("Squeeze", [x, np.array(axes, np.int64) if axes else None], opset=opset)
    elif axes:
        assert_same("Squeeze", [x], opset=opset, axes=axes)
    else:
        assert_same("Squeeze", [x], opset=opset)
    r = len(shape) + 2
    uaxes = data.draw(st.lists(st.integers(-r, r - 1), min_size=2, max_size=2, unique_by=lambda a: a % r))
    if opset >= 13:
        assert_same("Unsqueeze", [x, np.array(uaxes, np.int64)], opset=opset)
    else:
        assert_same("Unsqueeze", [x], opset=opset, axes=uaxes)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_flatten_matches_ort(shape, data):
    r = len(shape)
    axis = data.draw(st.integers(-r, r))
    x = arr(shape)
    out = assert_same("Flatten", [x], opset=13, axis=axis)[0]
    assert np.shares_memory(out, x) or x.size == 0


@SETTINGS
@given(shape=shapes, start=st.integers(-6, 6), end=st.one_of(st.none(), st.integers(-6, 6)))
def test_shape_start_end(shape, start, end):
    x = arr(shape)
    attrs = {"start": start} if end is None else {"start": start, "end": end}
    assert_same("Shape", [x], opset=15, **attrs)
    assert_same("Size", [x], opset=13)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_expand_matches_ort(shape, data):
    x = arr(shape)
    target = [data.draw(st.sampled_from([1, d])) if d > 1 else data.draw(st.integers(1, 3)) for d in shape]
    extra = data.draw(st.lists(st.integers(1, 3), max_size=2))
    out = assert_same("Expand", [x, np.array(extra + target, np.int64)], opset=13)[0]
    assert out.flags.writeable


def test_identity_returns_input_and_copies_sequences():
    x = arr((2, 3))
    assert run_tuili("Identity", [x], opset=16)[0] is x
    seq = [x]
    out = run_tuili("Identity", [seq], opset=16)[0]
    assert out == seq and out is not seq
    assert run_tuili("Identity", [None], opset=16)[0] is None


@pytest.mark.parametrize(
    "attr",
    [
        {"value": helper.make_tensor("v", TensorProto.INT32, [2, 2], [1, 2, 3, 4])},
        {"value_float": 1.5},
        {"value_floats": [1.0, 2.5]},
        {"value_int": 7},
        {"value_ints": [1, 2, 3]},
        {"value_string": "hi"},
        {"value_strings": ["a", "bc"]},
    ],
)
def test_constant_every_attribute(attr):
    assert_same("Constant", [], opset=13, **attr)


def test_constant_sparse_value():
    # onnxruntime returns a SparseTensor here, so compare with the dense value directly.
    sp = helper.make_sparse_tensor(
        helper.make_tensor("v", TensorProto.FLOAT, [2], [5.0, 6.0]),
        helper.make_tensor("i", TensorProto.INT64, [2], [1, 3]),
        [5],
    )
    (out,) = run_tuili("Constant", [], opset=13, sparse_value=sp)
    np.testing.assert_array_equal(out, np.array([0, 5, 0, 6, 0], np.float32))
    assert out.dtype == np.float32
    with pytest.raises(KernelError, match="exactly one"):
        run_tuili("Constant", [], opset=13, value_int=1, value_float=2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32])
def test_constant_of_shape(dtype):
    value = helper.make_tensor("v", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [1], [3])
    assert_same("ConstantOfShape", [np.array([2, 3], np.int64)], opset=20, value=value)
    assert_same("ConstantOfShape", [np.array([], np.int64)], opset=20, value=value)
    assert_same("ConstantOfShape", [np.array([4, 0], np.int64)], opset=20)


@SETTINGS
@given(rows=st.integers(1, 5), cols=st.integers(1, 5), k=st.integers(-5, 5), with_dtype=st.booleans())
def test_eyelike(rows, cols, k, with_dtype):
    attrs = {"k": k, **({"dtype": TensorProto.DOUBLE} if with_dtype else {})}
    assert_same("EyeLike", [arr((rows, cols))], opset=9, **attrs)


@SETTINGS
@given(
    start=st.integers(-20, 20), limit=st.integers(-20, 20), delta=st.integers(-7, 7).filter(bool),
    dtype=st.sampled_from([np.int32, np.int64, np.float32, np.float64]),
)
def test_range(start, limit, delta, dtype):
    ins = [np.array(v, dtype) for v in (start, limit, delta)]
    if np.dtype(dtype).kind == "f":
        ins[2] = np.array(delta / 3, dtype)
    # onnxruntime accumulates start + delta + delta ... in the output type; tuili computes
    # start + i * delta as the spec's pseudo-code does: float32 results differ by a few ulps.
    out = assert_same("Range", ins, opset=11, atol=1e-5)[0]
    if np.dtype(dtype).kind == "f":
        assert out.size == max(math.ceil((float(ins[1]) - float(ins[0])) / float(ins[2])), 0)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), k=st.one_of(st.none(), st.integers(-5, 5)), upper=st.integers(0, 1))
def test_trilu(shape, k, upper):
    x = arr(shape)
    assert_same("Trilu", [x, None if k is None else np.array(k, np.int64)], opset=14, upper=upper)
