"""Reductions against onnxruntime: axes as attribute (old opsets) and as input (new),
keepdims, noop_with_empty_axes; ArgMax/ArgMin with select_last_index; CumSum."""
from __future__ import annotations

from functools import partial

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.ops._ortref import assert_same
from tuili.ops.registry import get_kernel

SETTINGS = settings(max_examples=30, deadline=None)

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


_check = partial(assert_same, rtol=1e-5, atol=1e-5)


xs = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4),
                elements=st.floats(0.125, 3, width=32))


@st.composite
def axes_for(draw, x):
    return draw(st.lists(st.integers(-x.ndim, x.ndim - 1), unique_by=lambda a: a % x.ndim, max_size=x.ndim))


@SETTINGS
@given(xs, st.sampled_from(REDUCE_OPS), st.booleans(), st.data())
def test_reduce_axes_input_vs_ort(x, op, keepdims, data):
    axes = data.draw(axes_for(x))
    noop = data.draw(st.booleans())
    ax = np.array(axes, np.int64) if axes or data.draw(st.booleans()) else None
    _check(op, [x, ax], opset=18, keepdims=int(keepdims), noop_with_empty_axes=int(noop))


@SETTINGS
@given(xs, st.sampled_from(REDUCE_OPS), st.booleans(), st.data())
def test_reduce_axes_attribute_vs_ort(x, op, keepdims, data):
    axes = data.draw(axes_for(x))
    attrs = {"keepdims": int(keepdims)}
    if axes:
        attrs["axes"] = axes
    opset = 13 if op != "ReduceSum" else 11
    _check(op, [x], opset=opset, **attrs)


@SETTINGS
@given(hnp.arrays(np.int32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), elements=st.integers(-50, 50)),
       st.sampled_from(["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"]))
def test_reduce_int32_keeps_dtype(x, op):
    _check(op, [x, np.array([0], np.int64)], opset=18)


@SETTINGS
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=st.sampled_from([0.0, 1.0, 2.0])),
       st.sampled_from(["ArgMax", "ArgMin"]), st.booleans(), st.booleans(), st.data())
def test_argmax_vs_ort(x, op, keepdims, last, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    _check(op, [x], opset=13, axis=axis, keepdims=int(keepdims), select_last_index=int(last))


@SETTINGS
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=st.floats(-3, 3, width=32)),
       st.booleans(), st.booleans(), st.data())
def test_cumsum_vs_ort(x, exclusive, reverse, data):
    axis = np.array(data.draw(st.integers(-x.ndim, x.ndim - 1)), np.int64)
    _check("CumSum", [x, axis], opset=14, exclusive=int(exclusive), reverse=int(reverse))


def test_empty_reductions_give_identities():
    x = np.zeros((2, 0, 3), np.float32)
    ax = np.array([1], np.int64)
    fn = lambda op: get_kernel(op, "", 20).fn(x, ax, keepdims=0)  # noqa: E731
    np.testing.assert_array_equal(fn("ReduceSum"), np.zeros((2, 3)))
    np.testing.assert_array_equal(fn("ReduceProd"), np.ones((2, 3)))
    np.testing.assert_array_equal(fn("ReduceMax"), np.full((2, 3), -np.inf))
    np.testing.assert_array_equal(fn("ReduceMin"), np.full((2, 3), np.inf))
    np.testing.assert_array_equal(fn("ReduceLogSumExp"), np.full((2, 3), -np.inf))
    xi = np.zeros((0,), np.int32)
    assert get_kernel("ReduceMax", "", 20).fn(xi, keepdims=0) == np.iinfo(np.int32).min


def test_noop_with_empty_axes_keeps_composite_steps():
    x = np.array([[-1.0, 2.0]], np.float32)
    fn = lambda op: get_kernel(op, "", 18).fn(x, None, noop_with_empty_axes=1)  # noqa: E731
    np.testing.assert_array_equal(fn("ReduceSum"), x)
    np.testing.assert_array_equal(fn("ReduceL1"), np.abs(x))
    np.testing.assert_array_equal(fn("ReduceSumSquare"), x * x)


def test_cumprod_exclusive_reverse():
    x = np.array([1, 2, 3, 4], np.int64)
    ax = np.array(0, np.int64)
    np.testing.assert_array_equal(get_kernel("CumProd", "", 26).fn(x, ax), [1, 2, 6, 24])
    np.testing.assert_array_equal(get_kernel("CumProd", "", 26).fn(x, ax, exclusive=1, reverse=1), [24, 12, 4, 1])


def test_bool_reduce_max():
    x = np.array([[True, False], [False, False]])
    y = get_kernel("ReduceMax", "", 20).fn(x, np.array([1], np.int64), keepdims=0)
    assert y.dtype == np.bool_
    np.testing.assert_array_equal(y, [True, False])
