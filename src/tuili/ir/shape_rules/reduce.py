"""Reductions, arg-reductions and TopK."""
from __future__ import annotations

import numpy as np

from .registry import INT64, InferContext, TensorType, normalize_axis, shape_rule

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
        axes = list(ctx.attrs["axes"])
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
    return [TensorType(ctx.dtype(0), reduced_shape(shape, axes, keep, noop))]


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
