"""Reductions, arg-reductions and TopK."""
from __future__ import annotations

import numpy as np

from .registry import INT64, InferContext, TensorType, dim_add, dim_mul, normalize_axis, shape_rule

REDUCE_OPS = ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
              "ReduceSum ReduceSumSquare").split()


def reduced_shape(shape, axes, keepdims, noop_with_empty_axes=False):
    if shape is None:
        return None
    r = len(shape)
    if not axes:
        if noop_with_empty_axes:
            return tuple(shape)
        axes = range(r)
    axes = {normalize_axis(a, r) for a in axes}
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


@shape_rule(*REDUCE_OPS)
def _reduce(ctx: InferContext):
    shape = ctx.shape(0)
    keep = ctx.attr("keepdims", 1)
    noop = ctx.attr("noop_with_empty_axes", 0)
    if "axes" in ctx.attrs:
        axes: list[int] | None = list(ctx.attrs["axes"])
    elif ctx.has_input(1):
        axes = ctx.int_list_concrete(1)
        if axes is None:
            if shape is not None and keep:
                return [TensorType(ctx.dtype(0), (None,) * len(shape))]
            s1 = ctx.shape(1)
            if shape is not None and s1 is not None and len(s1) == 1 and isinstance(s1[0], int):
                return [TensorType(ctx.dtype(0), (None,) * (len(shape) - s1[0]))]
            return [TensorType(ctx.dtype(0), None)]
    else:
        axes = []
    out = reduced_shape(shape, axes, keep, noop)
    _propagate(ctx, axes, noop, out)
    return [TensorType(ctx.dtype(0), out)]


def _propagate(ctx, axes, noop, out_shape) -> None:
    """ReduceProd/Sum/Max/Min of a small 1-D shape value (numel = ReduceProd(Shape(x)))."""
    v = ctx.value(0)
    if v is None or np.ndim(v) != 1 or np.size(v) > 64 or ctx.op_type not in _VALUE_REDUCE:
        return
    if not axes and noop:
        ctx.set_value(0, v)
        return
    if out_shape is None or any(not isinstance(d, int) for d in out_shape):
        return
    acc = _VALUE_REDUCE[ctx.op_type](np.asarray(v).reshape(-1).tolist())
    if acc is None:
        return
    arr = np.empty((), dtype=object)
    arr[()] = acc
    if isinstance(acc, int):
        arr = np.asarray(acc, dtype=np.asarray(v).dtype if np.asarray(v).dtype != object else np.int64)
    ctx.set_value(0, arr.reshape(out_shape))


def _fold(fn):
    def run(items):
        acc = None
        for x in items:
            x = int(x) if isinstance(x, (int, np.integer)) else x
            if x is None:
                return None
            acc = x if acc is None else fn(acc, x)
            if acc is None:
                return None
        return acc

    return run


def _max(a, b):
    return max(a, b) if isinstance(a, int) and isinstance(b, int) else (a if a == b else None)


def _min(a, b):
    return min(a, b) if isinstance(a, int) and isinstance(b, int) else (a if a == b else None)


_VALUE_REDUCE = {"ReduceProd": _fold(dim_mul), "ReduceSum": _fold(dim_add), "ReduceMax": _fold(_max),
                 "ReduceMin": _fold(_min)}


@shape_rule("ArgMax", "ArgMin")
def _arg(ctx):
    shape = ctx.shape(0)
    return [TensorType(INT64, reduced_shape(shape, [ctx.attr("axis", 0)], ctx.attr("keepdims", 1))
                       if shape is not None else None)]


@shape_rule("TopK")
def _topk(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(ctx.dtype(0), None), TensorType(INT64, None)]
    if "k" in ctx.attrs:
        k = ctx.attrs["k"]
    else:
        kv = ctx.value(1)
        k = None
        if kv is not None:
            x = np.asarray(kv).reshape(-1)[0]
            k = int(x) if not isinstance(x, str) and x is not None else x
    axis = normalize_axis(ctx.attr("axis", -1), len(shape))
    out = tuple(shape[:axis]) + (k,) + tuple(shape[axis + 1:])
    return [TensorType(ctx.dtype(0), out), TensorType(INT64, out)]
