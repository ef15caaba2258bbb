"""Tensor-manipulation kernels (tuili.ops.tensor) against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.ops._ortref import assert_same, run_tuili
from tuili.errors import KernelError

SETTINGS = settings(max_examples=30, deadline=None)
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4)


def arr(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def ints(shape, lo, hi, seed=1):
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.int64)


@SETTINGS
@given(shape=shapes, n=st.integers(1, 3), data=st.data())
def test_concat(shape, n, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    xs = []
    for i in range(n):
        s = list(shape)
        s[axis] = data.draw(st.integers(0, 3))
        xs.append(arr(s, seed=i))
    assert_same("Concat", xs, opset=13, axis=axis)


@SETTINGS
@given(shape=shapes, data=st.data(), opset=st.sampled_from([11, 13, 18]))
def test_split(shape, data, opset):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    dim = shape[axis]
    x = arr(shape)
    cuts = sorted(data.draw(st.lists(st.integers(0, dim), max_size=2)))
    sizes = np.diff([0, *cuts, dim]).tolist()
    if opset == 11:
        assert_same("Split", [x], n_outputs=len(sizes), opset=opset, axis=axis, split=sizes)
    else:
        assert_same("Split", [x, np.array(sizes, np.int64)], n_outputs=len(sizes), opset=opset, axis=axis)
    if opset == 18:  # uneven num_outputs: last chunk smaller
        n = data.draw(st.integers(1, max(dim, 1)))
        assume(-(-dim // n) * (n - 1) < dim)
        assert_same("Split", [x], n_outputs=n, opset=18, axis=axis, num_outputs=n)
    else:  # no split given: equal parts
        assert_same("Split", [x], n_outputs=1, opset=opset, axis=axis)


big = st.sampled_from([2**63 - 1, -(2**63), 10, -10])


@SETTINGS
@given(shape=shapes, data=st.data(), opset=st.sampled_from([9, 13]))
def test_slice(shape, data, opset):
    x = arr(shape)
    r = len(shape)
    axes = data.draw(st.lists(st.integers(0, r - 1), min_size=1, max_size=r, unique=True))
    starts, ends, steps = [], [], []
    for a in axes:
        d = shape[a]
        starts.append(data.draw(st.one_of(st.integers(-d - 1, d + 1), big)))
        ends.append(data.draw(st.one_of(st.integers(-d - 1, d + 1), big)))
        steps.append(data.draw(st.sampled_from([1, 2, -1, -2])) if opset >= 10 else 1)
        # onnxruntime reads end=INT64_MAX with a negative step as "to the front"; the ONNX
        # spec (and its reference) clamps it to dim-1, giving an empty slice. tuili follows the spec.
        assume(not (steps[-1] < 0 and ends[-1] == 2**63 - 1))
    neg_axes = [a - r if data.draw(st.booleans()) else a for a in axes]
    if opset < 10:
        assert_same("Slice", [x], opset=opset, starts=starts, ends=ends, axes=axes)
    else:
        ins = [x] + [np.array(v, np.int64) for v in (starts, ends, neg_axes, steps)]
        out = assert_same("Slice", ins, opset=opset)[0]
        assert not np.shares_memory(out, x)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_gather_family(shape, data):
    x = arr(shape)
    r = len(shape)
    axis = data.draw(st.integers(-r, r - 1))
    d = shape[axis]
    idx_shape = data.draw(st.lists(st.integers(1, 3), max_size=2))
    assert_same("Gather", [x, ints(idx_shape, -d, d)], opset=13, axis=axis)
    ge_shape = [data.draw(st.integers(1, d)) for d in shape]  # may be smaller than data on every axis
    ge_shape[axis] = data.draw(st.integers(1, 3))
    assert_same("GatherElements", [x, ints(ge_shape, -d, d)], opset=13, axis=axis)
    b = data.draw(st.integers(0, r - 1))
    k = data.draw(st.integers(1, r - b))
    ind = np.stack([ints(shape[:b] + [2], -shape[b + j], shape[b + j], seed=j) for j in range(k)], axis=-1)
    assert_same("GatherND", [x, ind], opset=13, batch_dims=b)


def test_gather_out_of_range_is_a_kernel_error():
    with pytest.raises(KernelError, match="Gather: index 5 is out of range"):
        run_tuili("Gather", [arr((3, 2)), np.array([5], np.int64)], opset=13)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data(),
       reduction=st.sampled_from(["none", "add", "mul", "max", "min"]))
def test_scatter_elements_and_nd(shape, data, reduction):
    x = arr(shape)
    r = len(shape)
    axis = data.draw(st.integers(-r, r - 1))
    d = shape[axis]
    ushape = list(shape)
    ushape[axis] = data.draw(st.integers(1, d))
    # unique indices along axis for "none" (duplicates are undefined there)
    rng = np.random.default_rng(2)
    idx = np.argsort(rng.random(list(shape)), axis=axis)
    idx = np.take(idx, np.arange(ushape[axis]), axis=axis).astype(np.int64)
    if reduction != "none":
        idx = ints(ushape, -d, d)
    upd = arr(ushape, seed=3)
    assert_same("ScatterElements", [x, idx, upd], opset=18, axis=axis, reduction=reduction)
    k = data.draw(st.integers(1, r))
    n = data.draw(st.integers(1, 3))
    flat = rng.choice(int(np.prod(shape[:k])), size=min(n, int(np.prod(shape[:k]))), replace=reduction != "none")
    ind = np.stack(np.unravel_index(flat, shape[:k]), axis=-1).astype(np.int64)
    assert_same("ScatterND", [x, ind, arr([len(flat)] + shape[k:], seed=4)], opset=18, reduction=reduction)


@SETTINGS
@given(shape=st.lists(st.integers(2, 4), min_size=1, max_size=3), data=st.data(),
       mode=st.sampled_from(["constant", "reflect", "edge", "wrap"]))
def test_pad(shape, data, mode):
    x = arr(shape)
    r = len(shape)
    lo = 0 if mode != "constant" else -1
    pads = [data.draw(st.integers(lo, 2 if mode != "reflect" else 1)) for _ in range(2 * r)]
    assert_same("Pad", [x, np.array(pads, np.int64), np.array(1.5, np.float32)], opset=19, mode=mode)
    if mode in ("constant", "reflect", "edge"):
        assert_same("Pad", [x], opset=2, pads=pads, mode=mode, value=2.0)
    axes = data.draw(st.lists(st.integers(-r, r - 1), min_size=1, max_size=r, unique_by=lambda a: a % r))
    apads = [max(data.draw(st.integers(0, 1)), 0) for _ in range(2 * len(axes))]
    assert_same("Pad", [x, np.array(apads, np.int64), None, np.array(axes, np.int64)], opset=19, mode=mode)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_tile(shape, data):
    reps = [data.draw(st.integers(0, 3)) for _ in shape]
    assert_same("Tile", [arr(shape), np.array(reps, np.int64)], opset=13)


@SETTINGS
@given(shape=shapes, data=st.data(), largest=st.integers(0, 1))
def test_topk_ties_lower_index_first(shape, data, largest):
    x = ints(shape, 0, 3).astype(np.float32)  # many ties
    r = len(shape)
    axis = data.draw(st.integers(-r, r - 1))
    k = data.draw(st.integers(0, shape[axis]))
    assert_same("TopK", [x, np.array([k], np.int64)], n_outputs=2, opset=11, axis=axis, largest=largest)


def test_topk_old_opsets():
    x = arr((3, 5))
    assert_same("TopK", [x], n_outputs=2, opset=1, k=2)
    assert_same("TopK", [x, np.array([3], np.int64)], n_outputs=2, opset=10, axis=0)


@SETTINGS
@given(shape=st.lists(st.integers(0, 4), min_size=1, max_size=3))
def test_nonzero_and_compress(shape):
    x = ints(shape, -1, 2).astype(np.float32)
    assert_same("NonZero", [x], opset=13)
    cond = (ints([shape[0]], 0, 2) > 0)
    assert_same("Compress", [x, cond], opset=11, axis=0)
    assert_same("Compress", [x, ints([x.size], 0, 2) > 0], opset=11)


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=2), sorted_=st.integers(0, 1), use_axis=st.booleans())
def test_unique(shape, sorted_, use_axis):
    x = ints(shape, 0, 3).astype(np.float32)
    attrs = {"sorted": sorted_, **({"axis": 0} if use_axis else {})}
    assert_same("Unique", [x], n_outputs=4, opset=11, **attrs)


@SETTINGS
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), depth=st.integers(1, 5), data=st.data())
def test_onehot(shape, depth, data):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    idx = ints(shape, -depth - 1, depth + 1)
    vals = np.array([2, 7], np.int64)
    assert_same("OneHot", [idx, np.array([depth], np.int64), vals], opset=11, axis=axis)


@SETTINGS
@given(t=st.integers(1, 5), b=st.integers(1, 4), batch_first=st.booleans())
def test_reverse_sequence(t, b, batch_first):
    shape = (b, t, 2) if batch_first else (t, b, 2)
    lens = ints([b], 1, t + 1)
    attrs = {"batch_axis": 0, "time_axis": 1} if batch_first else {"batch_axis": 1, "time_axis": 0}
    assert_same("ReverseSequence", [arr(shape), lens], opset=10, **attrs)


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data())
def test_center_crop_pad(shape, data):
    target = [data.draw(st.integers(1, 6)) for _ in shape]
    assert_same("CenterCropPad", [arr(shape), np.array(target, np.int64)], opset=18)


def test_tensor_scatter_circular_and_linear():
    past = arr((2, 3, 5, 4))
    upd = arr((2, 3, 2, 4), seed=5)
    w = np.array([1, 4], np.int64)
    for mode in ("linear", "circular"):
        if mode == "linear":
            w = np.array([1, 3], np.int64)
        assert_same("TensorScatter", [past, upd, w], opset=24, mode=mode)
    assert_same("TensorScatter", [past, upd], opset=24)
    with pytest.raises(KernelError, match="exceeds max sequence length"):
        run_tuili("TensorScatter", [past, upd, np.array([4, 0], np.int64)], opset=24)


@SETTINGS
@given(rows=st.integers(1, 3), n=st.integers(1, 60), data=st.data(), largest=st.integers(0, 1),
       dtype=st.sampled_from([np.float32, np.int64]))
def test_topk_partition_path_matches_ort(rows, n, data, largest, dtype):
    # Force the partition-based path (normally only for long rows) on small, tie-heavy rows.
    import tuili.ops.tensor as tensor_ops

    k = data.draw(st.integers(0, n))
    x = ints((rows, n), 0, data.draw(st.sampled_from([2, 5, 1000])), seed=n).astype(dtype)
    old = tensor_ops.TOPK_FULL_SORT_BELOW
    tensor_ops.TOPK_FULL_SORT_BELOW = 1
    try:
        assert_same("TopK", [x, np.array([k], np.int64)], n_outputs=2, opset=11, largest=largest)
    finally:
        tensor_ops.TOPK_FULL_SORT_BELOW = old
