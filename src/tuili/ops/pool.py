"""Pooling kernels: MaxPool (with Indices), AveragePool, LpPool, Global*Pool, MaxUnpool.

Windowed max/average pools are separable: one pass per spatial dim, each k-1
vectorized ufunc calls over strided slices of the padded input (a 3x3 window
costs 4 passes, not 9). MaxPool with Indices and LpPool loop over the kernel
taps the same way. No Python loop ever runs over elements or channels.
"""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError, ShapeInferenceError
from tuili.ops.conv import _ints, resolve_pads
from tuili.ops.registry import NodeInfo, prepares, register


def _acc_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


def _pool_geometry(op, x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
    """-> kernel, strides, dilations, pads(begin+end), out_sp."""
    if x.ndim < 3:
        raise ShapeInferenceError(f"{op}: input must be (N, C, *spatial), got shape {x.shape}")
    nd = x.ndim - 2
    if not kernel_shape or len(kernel_shape) != nd:
        raise ShapeInferenceError(f"{op}: kernel_shape {kernel_shape} must have one entry per spatial dim of input {x.shape}")
    kernel = [int(k) for k in kernel_shape]
    strides = _ints(strides, nd, 1)
    dilations = _ints(dilations, nd, 1)
    in_sp = x.shape[2:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = resolve_pads(op, in_sp, kernel, strides, dilations, None, auto_pad)
        out_sp = [-(-in_sp[i] // strides[i]) for i in range(nd)]
        return kernel, strides, dilations, pads, out_sp
    pads = resolve_pads(op, in_sp, kernel, strides, dilations, pads, auto_pad)
    out_sp = []
    for i in range(nd):
        ek = (kernel[i] - 1) * dilations[i] + 1
        span = in_sp[i] + pads[i] + pads[nd + i] - ek
        if span < 0:
            raise ShapeInferenceError(
                f"{op}: spatial dim {i} of size {in_sp[i]} with pads ({pads[i]},{pads[nd + i]}) is smaller than the window {ek}"
            )
        if ceil_mode:
            o = -(-span // strides[i]) + 1
            # the last window must start inside the input or the left padding
            if (o - 1) * strides[i] >= in_sp[i] + pads[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out_sp.append(o)
    return kernel, strides, dilations, pads, out_sp


def _padded(x, pads, out_sp, kernel, strides, dilations, fill):
    """Pad x with ``fill`` so that every window of the (possibly ceil-mode) output fits."""
    nd = x.ndim - 2
    need_end = [
        max(0, (out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - x.shape[2 + i] - pads[i])
        for i in range(nd)
    ]
    begin = pads[:nd]
    if not any(begin) and not any(need_end):
        return x
    shape = x.shape[:2] + tuple(x.shape[2 + i] + begin[i] + need_end[i] for i in range(nd))
    out = np.full(shape, fill, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(begin, x.shape[2:]))] = x
    return out


def _taps(kernel, strides, dilations, out_sp):
    for kidx in np.ndindex(*kernel):
        yield kidx, (slice(None), slice(None)) + tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s) for k, s, d, o in zip(kidx, strides, dilations, out_sp)
        )


def _window_counts(in_sp, kernel, strides, dilations, pads, out_sp, include_pad: bool) -> np.ndarray:
    """Number of taps per output window that land inside the input (or inside the explicit pads)."""
    nd = len(in_sp)
    counts = None
    for i in range(nd):
        starts = np.arange(out_sp[i]) * strides[i] - pads[i]
        pos = starts[:, None] + np.arange(kernel[i])[None, :] * dilations[i]
        lo, hi = (-pads[i], in_sp[i] + pads[nd + i]) if include_pad else (0, in_sp[i])
        c = ((pos >= lo) & (pos < hi)).sum(axis=1)
        shape = [1] * nd
        shape[i] = out_sp[i]
        c = c.reshape(shape)
        counts = c if counts is None else counts * c
    return counts


# ----------------------------------------------------------------------------- MaxPool
def _min_value(dt: np.dtype):
    if dt.kind == "f":
        return -np.inf
    if dt.kind in "iu":
        return np.iinfo(dt).min
    raise KernelError(f"MaxPool: unsupported dtype {dt}")


@register("MaxPool", since=1)
def max_pool(ctx, x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None, storage_order=0, strides=None):
    kernel, strides, dilations, pads, out_sp = _pool_geometry(
        "MaxPool", x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode
    )
    want_idx = ctx.num_outputs > 1
    xp = _padded(x, pads, out_sp, kernel, strides, dilations, _min_value(x.dtype))
    y = None
    idx = None
    nd = x.ndim - 2
    in_sp = x.shape[2:]
    if want_idx:
        n, c = x.shape[:2]
        plane = math.prod(in_sp)
        base = (np.arange(n * c, dtype=np.int64) * plane).reshape((n, c) + (1,) * nd)
        # element strides of the spatial dims in the chosen storage order
        if storage_order == 0:
            el = [math.prod(in_sp[i + 1:]) for i in range(nd)]
        else:
            el = [math.prod(in_sp[:i]) for i in range(nd)]
        starts = [np.arange(out_sp[i]) * strides[i] - pads[i] for i in range(nd)]
    if not want_idx:
        return _separable_reduce(xp, kernel, strides, dilations, out_sp, np.maximum)
    for kidx, sl in _taps(kernel, strides, dilations, out_sp):
        v = xp[sl]
        if y is None:
            y = v.copy()
            if want_idx:
                idx = np.broadcast_to(_tap_index(kidx, starts, dilations, el, out_sp), y.shape).copy()
            continue
        if want_idx:
            better = v > y
            np.copyto(idx, _tap_index(kidx, starts, dilations, el, out_sp), where=better, casting="unsafe")
            np.copyto(y, v, where=better)
        else:
            np.maximum(y, v, out=y)
    if want_idx:
        return y, idx + base
    return y


def _tap_index(kidx, starts, dilations, el, out_sp):
    nd = len(kidx)
    total = 0
    for i in range(nd):
        shape = [1] * nd
        shape[i] = out_sp[i]
        total = total + ((starts[i] + kidx[i] * dilations[i]) * el[i]).reshape(shape)
    return np.asarray(total, dtype=np.int64)


def _separable_reduce(xp, kernel, strides, dilations, out_sp, ufunc):
    """Box max/sum as one pass per spatial dim (k-1 ufunc calls each) instead of prod(k) passes."""
    cur = xp
    nd = len(kernel)
    for i in range(nd):
        ax = 2 + i
        k, s, d, o = kernel[i], strides[i], dilations[i], out_sp[i]
        def sl(t, ax=ax, s=s, d=d, o=o, ndim=cur.ndim):
            idx = [slice(None)] * ndim
            idx[ax] = slice(t * d, t * d + (o - 1) * s + 1, s)
            return tuple(idx)
        acc = np.array(cur[sl(0)], copy=True)
        for t in range(1, k):
            ufunc(acc, cur[sl(t)], out=acc)
        cur = acc
    return cur if cur is not xp else xp.copy()


# ----------------------------------------------------------------------------- Average / Lp
def _sum_pool(xp_acc, kernel, strides, dilations, out_sp, power=None):
    if power is None:
        return _separable_reduce(xp_acc, kernel, strides, dilations, out_sp, np.add)
    acc = None
    for _, sl in _taps(kernel, strides, dilations, out_sp):
        v = xp_acc[sl]
        if power is not None:
            v = np.abs(v) ** power if power not in (1, 2) else (v * v if power == 2 else np.abs(v))
        if acc is None:
            acc = np.array(v, copy=True)
        else:
            acc += v
    return acc


@register("AveragePool", since=1)
def average_pool(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None, pads=None, strides=None):
    kernel, strides, dilations, pads, out_sp = _pool_geometry(
        "AveragePool", x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode
    )
    adt = _acc_dtype(x.dtype)
    xp = _padded(x.astype(adt, copy=False), pads, out_sp, kernel, strides, dilations, 0)
    acc = _sum_pool(xp, kernel, strides, dilations, out_sp)
    counts = _window_counts(x.shape[2:], kernel, strides, dilations, pads, out_sp, bool(count_include_pad))
    acc /= np.maximum(counts, 1).astype(adt)
    return acc.astype(x.dtype, copy=False)


@register("LpPool", since=1)
def lp_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2, pads=None, strides=None):
    kernel, strides, dilations, pads, out_sp = _pool_geometry(
        "LpPool", x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode
    )
    adt = _acc_dtype(x.dtype)
    p = float(p)
    if p.is_integer():
        p = int(p)
    xp = _padded(x.astype(adt, copy=False), pads, out_sp, kernel, strides, dilations, 0)
    acc = _sum_pool(xp, kernel, strides, dilations, out_sp, power=p)
    y = np.sqrt(acc) if p == 2 else acc ** (1.0 / p)
    return y.astype(x.dtype, copy=False)


def _pool_on_torch(info: NodeInfo, kind: str, generic):
    """Plan time: a 2-D float32 max/average pool on torch's kernel (``ops._torch.pool2d_on_torch``),
    falling back to ``generic`` for inputs it was not planned for; None keeps numpy."""
    from tuili.ops._torch import pool2d_on_torch

    a = info.attrs
    shape = info.shapes[0]
    kernel = a.get("kernel_shape")
    if (not info.float32_or_unknown(0) or (shape is not None and len(shape) != 4)
            or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or not kernel or len(kernel) != 2):
        return None
    pads = list(a.get("pads") or [0, 0, 0, 0]) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0, 0, 0, 0]
    pool = pool2d_on_torch(kind, list(kernel), _ints(a.get("strides"), 2, 1), pads, _ints(a.get("dilations"), 2, 1),
                           bool(a.get("count_include_pad", 0)), bool(a.get("ceil_mode", 0)))
    if pool is None:
        return None

    def pool_on_torch(*args, **attrs):
        x = args[-1]
        if x.ndim == 4 and x.dtype == np.float32 and (len(args) == 1 or args[0].num_outputs == 1):
            return pool(x)
        return generic(*args, **attrs)

    return pool_on_torch


@prepares(max_pool)
def prepare_max_pool(info: NodeInfo):
    return _pool_on_torch(info, "max", max_pool)


@prepares(average_pool)
def prepare_average_pool(info: NodeInfo):
    return _pool_on_torch(info, "average", average_pool)


# ----------------------------------------------------------------------------- Global pools
def _spatial_axes(op, x):
    if x.ndim < 3:
        raise ShapeInferenceError(f"{op}: input must be (N, C, *spatial), got shape {x.shape}")
    return tuple(range(2, x.ndim))


@register("GlobalAveragePool", since=1)
def global_average_pool(x):
    axes = _spatial_axes("GlobalAveragePool", x)
    adt = _acc_dtype(x.dtype)
    n, c = x.shape[:2]
    plane = math.prod(x.shape[2:])
    flat = np.ascontiguousarray(x).reshape(n, c, plane)
    y = np.add.reduce(flat, axis=2, dtype=adt) / adt.type(max(plane, 1))
    return y.reshape((n, c) + (1,) * len(axes)).astype(x.dtype, copy=False)


@register("GlobalMaxPool", since=1)
def global_max_pool(x):
    return np.max(x, axis=_spatial_axes("GlobalMaxPool", x), keepdims=True)


@register("GlobalLpPool", since=1)
def global_lp_pool(x, *, p=2):
    axes = _spatial_axes("GlobalLpPool", x)
    adt = _acc_dtype(x.dtype)
    xa = np.abs(x.astype(adt, copy=False))
    p = float(p)
    if p == 2:
        y = np.sqrt(np.sum(xa * xa, axis=axes, keepdims=True))
    else:
        y = np.sum(xa ** p, axis=axes, keepdims=True) ** (1.0 / p)
    return y.astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------- MaxUnpool
@register("MaxUnpool", since=9)
def max_unpool(x, indices, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    nd = x.ndim - 2
    kernel = [int(k) for k in kernel_shape]
    strides = _ints(strides, nd, 1)
    pads = _ints(pads, 2 * nd, 0)
    # indices address the inferred (unpadded MaxPool input) shape; an explicit output_shape
    # only enlarges the canvas, with the inferred block at its origin.
    inferred = x.shape[:2] + tuple(
        (x.shape[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[nd + i] for i in range(nd)
    )
    total = math.prod(inferred)
    flat_idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if flat_idx.size and (flat_idx.min() < 0 or flat_idx.max() >= total):
        raise KernelError(f"MaxUnpool: indices out of range for the unpooled shape {inferred}")
    y = np.zeros(total, dtype=x.dtype)
    y[flat_idx] = x.reshape(-1)
    y = y.reshape(inferred)
    if output_shape is None:
        return y
    out_shape = tuple(int(v) for v in np.asarray(output_shape).reshape(-1))
    if out_shape == inferred:
        return y
    if len(out_shape) != len(inferred) or any(o < i for o, i in zip(out_shape, inferred)):
        raise ShapeInferenceError(f"MaxUnpool: output_shape {out_shape} is smaller than the unpooled shape {inferred}")
    res = np.zeros(out_shape, dtype=x.dtype)
    res[tuple(slice(0, i) for i in inferred)] = y
    return res
