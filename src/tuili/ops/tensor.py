"""Tensor-manipulation kernels: Concat, Split, Slice, Gather*, Scatter*, TensorScatter, Pad,
Tile, TopK, NonZero, Unique, OneHot, ReverseSequence, Compress, CenterCropPad.

Every kernel here returns a fresh array that does not alias its inputs (Split and Slice
copy their views), so outputs may be handed to user code as they are. Inputs are never
written to: scatter-style kernels copy ``data`` first.
"""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register


def _ints(v) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1).tolist()]


def _axis(axis: int, rank: int, op: str, extra: int = 0) -> int:
    """Normalize ``axis`` for a tensor of ``rank`` (``extra`` widens the range, e.g. for inserts)."""
    r = rank + extra
    if not -r <= axis < r:
        raise KernelError(f"{op}: axis {axis} is out of range for rank {rank}; use an axis in [{-r}, {r - 1}]")
    return axis + r if axis < 0 else axis


def _fix_indices(indices: np.ndarray, dim, op: str) -> np.ndarray:
    """int64 copy of ``indices`` with negatives wrapped; raises on out-of-range entries."""
    idx = np.asarray(indices).astype(np.int64, copy=True)
    dim = np.asarray(dim, dtype=np.int64)
    if idx.size:
        bad = (idx < -dim) | (idx >= dim)
        if bad.any():
            raise KernelError(
                f"{op}: index {idx[bad].reshape(-1)[0]} is out of range for a dimension of size "
                f"{int(np.broadcast_to(dim, idx.shape)[bad].reshape(-1)[0])}"
            )
        idx = np.where(idx < 0, idx + dim, idx)
    return idx


# ---------------------------------------------------------------- Concat


def _concat(inputs, axis):
    arrays = [np.asarray(a) for a in inputs if a is not None]
    if not arrays:
        raise KernelError("Concat: needs at least one input")
    axis = _axis(axis, arrays[0].ndim, "Concat")
    try:
        return np.concatenate(arrays, axis=axis)
    except ValueError as e:
        shapes = [a.shape for a in arrays]
        raise KernelError(f"Concat: inputs of shapes {shapes} cannot be joined on axis {axis}: {e}") from None


@register("Concat", since=1)
def concat_v1(*inputs, axis=1):
    return _concat(inputs, axis)


@register("Concat", since=4)
def concat(*inputs, axis):
    return _concat(inputs, axis)


# ---------------------------------------------------------------- Split


def _split(x, axis, sizes, n_out, num_outputs=None):
    axis = _axis(axis, x.ndim, "Split")
    dim = x.shape[axis]
    if sizes is None:
        n = num_outputs if num_outputs is not None else n_out
        if num_outputs is None:
            if dim % n:
                raise KernelError(f"Split: axis {axis} of size {dim} cannot be split evenly into {n} outputs")
            sizes = [dim // n] * n
        else:  # opset 18: last chunk may be smaller
            chunk = -(-dim // n)
            sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
    else:
        sizes = _ints(sizes)
        if sum(sizes) != dim:
            raise KernelError(f"Split: split sizes {sizes} do not add up to axis {axis} size {dim}")
    bounds = np.cumsum([0] + sizes)
    pre = (slice(None),) * axis
    return tuple(x[pre + (slice(int(b), int(e)),)].copy() for b, e in zip(bounds[:-1], bounds[1:]))


@register("Split", since=1)
def split_v1(ctx, x, split=None, *, axis=0):
    return _split(x, axis, split, ctx.num_outputs)


@register("Split", since=2)
def split_v2(ctx, x, *, axis=0, split=None):
    return _split(x, axis, split, ctx.num_outputs)


@register("Split", since=13)
def split_v13(ctx, x, split=None, *, axis=0):
    return _split(x, axis, split, ctx.num_outputs)


@register("Split", since=18)
def split(ctx, x, split=None, *, axis=0, num_outputs=None):
    if split is not None and num_outputs is not None:
        raise KernelError("Split: give either the split input or the num_outputs attribute, not both")
    return _split(x, axis, split, ctx.num_outputs, num_outputs)


# ---------------------------------------------------------------- Slice


def _slice(data, starts, ends, axes, steps):
    starts, ends = _ints(starts), _ints(ends)
    if len(starts) != len(ends):
        raise KernelError(f"Slice: starts {starts} and ends {ends} differ in length")
    axes = list(range(len(starts))) if axes is None else [_axis(a, data.ndim, "Slice") for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise KernelError(f"Slice: step 0 on axis {a}")
        d = data.shape[a]
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:  # clamp to [0, dim]
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:  # clamp starts to [0, dim-1], ends to [-1, dim-1]
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        index[a] = slice(0, 0) if d == 0 else slice(s, None if e < 0 else e, st)
    return data[tuple(index)].copy()


@register("Slice", since=1)
def slice_v1(data, *, starts, ends, axes=None):
    return _slice(data, starts, ends, axes, None)


@register("Slice", since=10)
def slice_(data, starts, ends, axes=None, steps=None):
    return _slice(data, starts, ends, axes, steps)


# ---------------------------------------------------------------- Gather family


@register("Gather", since=1)
def gather(data, indices, *, axis=0):
    axis = _axis(axis, data.ndim, "Gather")
    try:  # numpy wraps negative indices itself and raises on out-of-range ones
        return np.asarray(np.take(data, indices, axis=axis))  # 0-d indices on 1-D data give a numpy scalar
    except IndexError:
        _fix_indices(indices, data.shape[axis], "Gather")  # raises a KernelError naming the index
        raise


@register("GatherElements", since=11)
def gather_elements(data, indices, *, axis=0):
    axis = _axis(axis, data.ndim, "GatherElements")
    indices = np.asarray(indices)
    if indices.ndim != data.ndim:
        raise KernelError(f"GatherElements: indices rank {indices.ndim} differs from data rank {data.ndim}")
    # Output has the indices' shape: other dims of indices may be smaller than data's (no broadcast).
    data = data[tuple(slice(None) if i == axis else slice(0, n) for i, n in enumerate(indices.shape))]
    try:
        return np.take_along_axis(data, indices, axis=axis)
    except IndexError:
        _fix_indices(indices, data.shape[axis], "GatherElements")
        raise


@register("GatherND", since=11)
def gather_nd(data, indices, *, batch_dims=0):
    b = batch_dims
    k = indices.shape[-1]
    if b + k > data.ndim:
        raise KernelError(f"GatherND: indices last dim {k} + batch_dims {b} exceeds data rank {data.ndim}")
    if data.shape[:b] != indices.shape[:b]:
        raise KernelError(f"GatherND: batch dims of data {data.shape} and indices {indices.shape} differ")
    nb = math.prod(data.shape[:b])
    d = data.reshape((nb,) + data.shape[b:])
    idx = indices.reshape((nb, -1, k))
    idx = _fix_indices(idx, np.array(data.shape[b : b + k], dtype=np.int64), "GatherND")
    sel = (np.arange(nb)[:, None],) + tuple(idx[..., i] for i in range(k))
    out = d[sel]  # (nb, m) + data.shape[b+k:]
    return out.reshape(indices.shape[:-1] + data.shape[b + k :])


# ---------------------------------------------------------------- Scatter family

_REDUCERS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _apply(out, idx, updates, reduction, op):
    if reduction == "none":
        out[idx] = updates
    else:
        fn = _REDUCERS.get(reduction)
        if fn is None:
            raise KernelError(f"{op}: unknown reduction {reduction!r}; use none, add, mul, max or min")
        fn.at(out, idx, updates)
    return out


def _scatter_elements(data, indices, updates, axis, reduction, op):
    axis = _axis(axis, data.ndim, op)
    if indices.shape != updates.shape:
        raise KernelError(f"{op}: indices shape {indices.shape} differs from updates shape {updates.shape}")
    idx = _fix_indices(indices, data.shape[axis], op)
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = idx
    return _apply(data.copy(), tuple(grid), updates, reduction, op)


@register("Scatter", since=9)
def scatter(data, indices, updates, *, axis=0):
    return _scatter_elements(data, indices, updates, axis, "none", "Scatter")


@register("ScatterElements", since=11)
def scatter_elements(data, indices, updates, *, axis=0, reduction="none"):
    return _scatter_elements(data, indices, updates, axis, reduction, "ScatterElements")


@register("ScatterND", since=11)
def scatter_nd(data, indices, updates, *, reduction="none"):
    k = indices.shape[-1]
    if k > data.ndim:
        raise KernelError(f"ScatterND: indices last dim {k} exceeds data rank {data.ndim}")
    idx = _fix_indices(indices, np.array(data.shape[:k], dtype=np.int64), "ScatterND")
    sel = tuple(idx[..., i] for i in range(k))
    return _apply(data.copy(), sel, updates, reduction, "ScatterND")


@register("TensorScatter", since=24)
def tensor_scatter(past_cache, update, write_indices=None, *, axis=-2, mode="linear"):
    axis = _axis(axis, past_cache.ndim, "TensorScatter")
    if axis == 0:
        raise KernelError("TensorScatter: axis must not be the batch axis 0")
    if mode not in ("linear", "circular"):
        raise KernelError(f"TensorScatter: unknown mode {mode!r}; use linear or circular")
    out = past_cache.copy()
    batch, max_len, seq = past_cache.shape[0], past_cache.shape[axis], update.shape[axis]
    w = np.zeros(batch, dtype=np.int64) if write_indices is None else np.asarray(write_indices, dtype=np.int64)
    pre = (slice(None),) * (axis - 1)
    for b in range(batch):
        pos = w[b] + np.arange(seq)
        if mode == "circular":
            pos %= max_len
        elif seq and (pos[0] < 0 or pos[-1] >= max_len):
            raise KernelError(
                f"TensorScatter: write index {w[b]} + {seq} updates exceeds max sequence length {max_len} (batch {b})"
            )
        out[b][pre + (pos,)] = update[b]
    return out


# ---------------------------------------------------------------- Pad

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(data, pads, mode, value, axes=None):
    r = data.ndim
    pads = _ints(pads)
    axes = list(range(r)) if axes is None else [_axis(a, r, "Pad") for a in _ints(axes)]
    if len(pads) != 2 * len(axes):
        raise KernelError(f"Pad: pads has {len(pads)} entries, expected {2 * len(axes)} for axes {axes}")
    if mode not in _PAD_MODES:
        raise KernelError(f"Pad: unknown mode {mode!r}; use constant, reflect, edge or wrap")
    before, after = [0] * r, [0] * r
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]
    # Negative pads crop first.
    crop = tuple(slice(-min(b, 0), d + min(e, 0)) for b, e, d in zip(before, after, data.shape))
    x = data[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(before, after)]
    if mode == "constant":
        v = 0 if value is None else np.asarray(value).reshape(-1)[0]
        if x.dtype == object:  # strings: fill by hand so the padding stays a plain str
            out = np.empty([d + b + e for d, (b, e) in zip(x.shape, widths)], dtype=object)
            out[...] = "" if value is None else str(v)
            out[tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, widths))] = x
            return out
        return np.pad(x, widths, mode="constant", constant_values=v)
    return np.pad(x, widths, mode=_PAD_MODES[mode])


@register("Pad", since=1)
def pad_v1(data, *, paddings, mode="constant", value=0.0):
    return _pad(data, paddings, mode, np.asarray(value, dtype=data.dtype))


@register("Pad", since=2)
def pad_v2(data, *, pads, mode="constant", value=0.0):
    return _pad(data, pads, mode, np.asarray(value, dtype=data.dtype))


@register("Pad", since=11)
def pad(data, pads, constant_value=None, axes=None, *, mode="constant"):
    return _pad(data, pads, mode, constant_value, axes)


# ---------------------------------------------------------------- Tile


@register("Tile", since=1)
def tile_v1(x, tiles, axis):
    reps = [1] * x.ndim
    reps[_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim, "Tile")] = int(np.asarray(tiles).reshape(-1)[0])
    return np.tile(x, reps)


@register("Tile", since=6)
def tile(x, repeats):
    reps = _ints(repeats)
    if len(reps) != x.ndim:
        raise KernelError(f"Tile: repeats {reps} must have one entry per input dim (shape {x.shape})")
    return np.tile(x, reps)


# ---------------------------------------------------------------- TopK


# Rows shorter than this, or k above a quarter of the row, use one full stable sort.
TOPK_FULL_SORT_BELOW = 256


def _stable_order(v: np.ndarray, largest: bool) -> np.ndarray:
    """Per-row (last axis) order, ties broken by the lower position: for descending order,
    sort the reversed row ascending (stable), reverse the result and map positions back."""
    if not largest:
        return np.argsort(v, axis=-1, kind="stable")
    n = v.shape[-1]
    return (n - 1) - np.flip(np.argsort(np.flip(v, axis=-1), axis=-1, kind="stable"), axis=-1)


def _topk_rows(v: np.ndarray, k: int, largest: bool) -> np.ndarray | None:
    """Indices of the top k per row of 2-D ``v`` via a partition; None when ties or NaNs make
    the candidate set large (the caller then sorts everything)."""
    rows, n = v.shape
    if v.dtype.kind == "f" and np.isnan(v).any():
        return None
    kth = np.partition(v, n - k if largest else k - 1, axis=1)[:, n - k if largest else k - 1]
    cand = v >= kth[:, None] if largest else v <= kth[:, None]
    counts = cand.sum(axis=1)
    width = int(counts.max())
    if width > 4 * k:
        return None
    r, c = np.nonzero(cand)  # row-major: positions ascend within each row
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slot = np.arange(r.size) - starts[r]
    cols = np.full((rows, width), n, dtype=np.int64)
    cols[r, slot] = c
    vals = np.empty((rows, width), dtype=v.dtype)
    if v.dtype.kind == "f":
        pad = -np.inf if largest else np.inf
    elif v.dtype.kind in "iu":
        info = np.iinfo(v.dtype)
        pad = info.min if largest else info.max
    else:
        return None
    vals[...] = pad
    vals[r, slot] = v[r, c]
    # Padding equals the worst value at most and sits after every real candidate, so the
    # stable order puts real candidates (lower positions first on ties) in front.
    order = _stable_order(vals, largest)[:, :k]
    return np.take_along_axis(cols, order, axis=1)


def _topk(x, k, axis, largest):
    axis = _axis(axis, x.ndim, "TopK")
    n = x.shape[axis]
    if not 0 <= k <= n:
        raise KernelError(f"TopK: k={k} is out of range for axis {axis} of size {n}")
    v = np.moveaxis(x, axis, -1)
    lead = v.shape[:-1]
    v2 = v.reshape(-1, n)
    idx = None
    if 0 < k and n >= TOPK_FULL_SORT_BELOW and 4 * k < n and v2.shape[0]:
        idx = _topk_rows(v2, k, largest)
    if idx is None:
        idx = _stable_order(v2, largest)[:, :k]
    idx = idx.astype(np.int64, copy=False)
    vals = np.take_along_axis(v2, idx, axis=1)
    back = lambda a: np.ascontiguousarray(np.moveaxis(a.reshape(lead + (k,)), -1, axis))  # noqa: E731
    return back(vals), back(idx)


@register("TopK", since=1)
def topk_v1(x, *, k, axis=-1):
    return _topk(x, k, axis, True)


@register("TopK", since=10)
def topk_v10(x, k, *, axis=-1):
    return _topk(x, int(np.asarray(k).reshape(-1)[0]), axis, True)


@register("TopK", since=11)
def topk(x, k, *, axis=-1, largest=1, sorted=1):  # noqa: A002 - ONNX attribute name
    return _topk(x, int(np.asarray(k).reshape(-1)[0]), axis, largest)


# ---------------------------------------------------------------- NonZero / Unique


@register("NonZero", since=9)
def nonzero(x):
    x = np.asarray(x)
    if x.ndim == 0:
        return np.zeros((0, int(bool(x))), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@register("Unique", since=11)
def unique(ctx, x, *, axis=None, sorted=1):  # noqa: A002
    if axis is not None:
        axis = _axis(axis, x.ndim, "Unique")
    y, first, inverse, counts = np.unique(
        x, return_index=True, return_inverse=True, return_counts=True, axis=axis, equal_nan=False
    )
    inverse = inverse.reshape(-1)
    if not sorted:
        perm = np.argsort(first, kind="stable")
        rank = np.empty_like(perm)
        rank[perm] = np.arange(perm.size)
        y = np.take(y, perm, axis=0 if axis is None else axis)
        first, counts, inverse = first[perm], counts[perm], rank[inverse]
    outs = (y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64))
    return outs[: max(ctx.num_outputs, 1)]


# ---------------------------------------------------------------- OneHot


@register("OneHot", since=9)
def one_hot(indices, depth, values, *, axis=-1):
    d = np.asarray(depth).reshape(-1)
    if d.size != 1:
        raise KernelError(f"OneHot: depth must hold one value, got shape {np.asarray(depth).shape}")
    d = int(d[0])
    values = np.asarray(values).reshape(-1)
    if values.size != 2:
        raise KernelError(f"OneHot: values must hold [off, on], got {values.size} elements")
    r = indices.ndim
    axis = _axis(axis, r, "OneHot", extra=1)
    ind = np.asarray(indices).astype(np.int64)
    ind = np.where(ind < 0, ind + d, ind)
    hot = ind[..., None] == np.arange(d, dtype=np.int64)
    hot = np.moveaxis(hot, -1, axis)
    return np.where(hot, values[1], values[0]).astype(values.dtype, copy=False)


# ---------------------------------------------------------------- ReverseSequence / Compress


@register("ReverseSequence", since=10)
def reverse_sequence(x, sequence_lens, *, batch_axis=1, time_axis=0):
    if {batch_axis, time_axis} != {0, 1}:
        raise KernelError(f"ReverseSequence: batch_axis/time_axis must be 0 and 1, got {batch_axis}, {time_axis}")
    T, B = x.shape[time_axis], x.shape[batch_axis]
    lens = np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
    if lens.size != B:
        raise KernelError(f"ReverseSequence: sequence_lens has {lens.size} entries, batch size is {B}")
    t = np.arange(T)[:, None]
    src = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # (T, B)
    if time_axis == 1:
        src = src.T
    src = src.reshape(src.shape + (1,) * (x.ndim - 2))
    return np.take_along_axis(x, np.broadcast_to(src, x.shape), axis=time_axis)


@register("Compress", since=9)
def compress(x, condition, *, axis=None):
    cond = np.asarray(condition).astype(bool).reshape(-1)
    if axis is None:
        x, axis = x.reshape(-1), 0
    else:
        axis = _axis(axis, x.ndim, "Compress")
    n = x.shape[axis]
    if cond.size > n:
        if cond[n:].any():
            raise KernelError(f"Compress: condition has {cond.size} entries, axis {axis} has only {n}")
        cond = cond[:n]
    return np.compress(cond, x, axis=axis)


# ---------------------------------------------------------------- CenterCropPad


@register("CenterCropPad", since=18)
def center_crop_pad(x, shape, *, axes=None):
    target = _ints(shape)
    axes = list(range(x.ndim)) if axes is None else [_axis(a, x.ndim, "CenterCropPad") for a in axes]
    if len(target) != len(axes):
        raise KernelError(f"CenterCropPad: shape {target} must have one entry per axis {axes}")
    out_shape = list(x.shape)
    src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    for a, t in zip(axes, target):
        d = x.shape[a]
        out_shape[a] = t
        if d > t:
            s = (d - t) // 2
            src[a] = slice(s, s + t)
        elif d < t:
            s = (t - d) // 2
            dst[a] = slice(s, s + d)
    out = np.zeros(out_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out
