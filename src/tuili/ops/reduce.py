"""Reductions: Reduce* (axes as attribute before opset 13/18, as input after), ArgMax/ArgMin,
CumSum/CumProd.

Semantics worth knowing:
* axes omitted/empty: reduce everything, unless ``noop_with_empty_axes`` is set, in which case the
  reduction is over the empty set of axes and only the non-reduction steps of composite ops run
  (ReduceL1 -> |x|, ReduceSumSquare -> x^2, ReduceLogSum -> log x, ...).
* Reducing over a zero-sized dimension gives the identity of the reduction (0 for sums, 1 for
  products, -inf / dtype min for max, +inf / dtype max for min, -inf for the log-sums).
* Outputs keep the input dtype; float16 and bfloat16 accumulate in float32.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.elementwise import is_exotic
from tuili.ops.registry import register

_asarray = np.asarray


def _norm_axes(axes, ndim: int, op: str):
    """Normalize axes (list, ndarray or None) to a sorted tuple, or None for 'not given / empty'."""
    if axes is None:
        return None
    axes = [int(a) for a in np.asarray(axes).reshape(-1)]
    if not axes:
        return None
    out = []
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise KernelError(f"{op}: axis {a} is out of range for an input of rank {ndim}")
        out.append(a % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def _acc_dtype(dt: np.dtype):
    if is_exotic(dt) or dt == np.float16:
        return np.dtype(np.float32)
    return dt


def _sum(x, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=_acc_dtype(x.dtype))


def _mean(x, axis, keepdims):
    if x.dtype.kind in "iub":
        return np.mean(x, axis=axis, keepdims=keepdims, dtype=np.float64)
    return np.mean(x, axis=axis, keepdims=keepdims, dtype=_acc_dtype(x.dtype))


def _extreme(fn, sign: int):
    def red(x, axis, keepdims):
        if is_exotic(x.dtype):
            x = x.astype(np.float32)
        if x.size == 0:
            if x.dtype.kind == "f":
                initial = -np.inf * sign
            elif x.dtype.kind == "b":
                initial = sign < 0
            else:
                info = np.iinfo(x.dtype)
                initial = info.min if sign > 0 else info.max
            return fn(x, axis=axis, keepdims=keepdims, initial=initial)
        return fn(x, axis=axis, keepdims=keepdims)

    return red


def _prod(x, axis, keepdims):
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=_acc_dtype(x.dtype))


def _l1(x, axis, keepdims):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims, dtype=_acc_dtype(x.dtype))


def _sum_square(x, axis, keepdims):
    if is_exotic(x.dtype) or x.dtype == np.float16:
        x = x.astype(np.float32)
    return np.sum(np.square(x), axis=axis, keepdims=keepdims)


def _l2(x, axis, keepdims):
    s = _sum_square(x, axis, keepdims)
    if s.dtype.kind in "iu":
        s = s.astype(np.float64)
    return np.sqrt(s)


def _log_sum(x, axis, keepdims):
    s = _sum(x, axis, keepdims)
    if s.dtype.kind in "iu":
        s = s.astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.log(s)


def _log_sum_exp(x, axis, keepdims):
    if is_exotic(x.dtype) or x.dtype == np.float16:
        x = x.astype(np.float32)
    elif x.dtype.kind in "iu":
        x = x.astype(np.float64)
    if x.size == 0:
        m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    else:
        m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    with np.errstate(divide="ignore"):
        s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    s += m
    if not keepdims:
        s = s.reshape(()) if axis is None else np.squeeze(s, axis=axis)
    return s


_REDUCERS = {
    "ReduceSum": _sum,
    "ReduceMean": _mean,
    "ReduceMax": _extreme(np.max, +1),
    "ReduceMin": _extreme(np.min, -1),
    "ReduceProd": _prod,
    "ReduceL1": _l1,
    "ReduceL2": _l2,
    "ReduceLogSum": _log_sum,
    "ReduceLogSumExp": _log_sum_exp,
    "ReduceSumSquare": _sum_square,
}


def _reduce(op: str, x, axes, keepdims: int, noop_with_empty_axes: int) -> np.ndarray:
    x = _asarray(x)
    ax = _norm_axes(axes, x.ndim, op)
    if ax is None:
        ax = () if noop_with_empty_axes else None
    if ax is not None and x.ndim == 0:
        ax = ()
    y = _REDUCERS[op](x, ax, bool(keepdims))
    return _asarray(y).astype(x.dtype, copy=False)


def _make(op: str):
    def reduce_attr(x, *, axes=None, keepdims=1):
        return _reduce(op, x, axes, keepdims, 0)

    def reduce_input(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return _reduce(op, x, axes, keepdims, noop_with_empty_axes)

    reduce_attr.__name__ = reduce_input.__name__ = op
    return reduce_attr, reduce_input


for _op in _REDUCERS:
    _attr, _input = _make(_op)
    register(_op, since=1)(_attr)
    register(_op, since=13 if _op == "ReduceSum" else 18)(_input)


# ----------------------------------------------------------------------------------------------
# ArgMax / ArgMin


def _arg(fn, x, axis, keepdims, select_last_index):
    x = _asarray(x)
    if is_exotic(x.dtype):
        x = x.astype(np.float32)
    if x.ndim == 0:
        return np.zeros((), np.int64)
    axis = axis % x.ndim
    if select_last_index:
        n = x.shape[axis]
        idx = (n - 1) - fn(np.flip(x, axis=axis), axis=axis, keepdims=bool(keepdims))
    else:
        idx = fn(x, axis=axis, keepdims=bool(keepdims))
    return _asarray(idx).astype(np.int64, copy=False)


@register("ArgMax", since=1)
def argmax(x, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmax, x, axis, keepdims, select_last_index)


@register("ArgMin", since=1)
def argmin(x, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmin, x, axis, keepdims, select_last_index)


# ----------------------------------------------------------------------------------------------
# CumSum / CumProd


def _cumulative(fn, identity, x, axis, exclusive, reverse, op):
    x = _asarray(x)
    dt = x.dtype
    axis_v = np.asarray(axis).reshape(-1)
    if axis_v.size != 1:
        raise KernelError(f"{op}: axis must be a scalar tensor, got shape {np.asarray(axis).shape}")
    if x.ndim == 0:
        return x.copy()
    ax = int(axis_v[0])
    if not -x.ndim <= ax < x.ndim:
        raise KernelError(f"{op}: axis {ax} is out of range for an input of rank {x.ndim}")
    ax %= x.ndim
    acc = _acc_dtype(dt)
    src = x.astype(acc) if acc != dt else x
    if reverse:
        src = np.flip(src, axis=ax)
    y = fn(src, axis=ax, dtype=acc)
    if exclusive:
        shifted = np.full_like(y, identity)
        dst = [slice(None)] * x.ndim
        srcs = [slice(None)] * x.ndim
        dst[ax] = slice(1, None)
        srcs[ax] = slice(0, -1)
        shifted[tuple(dst)] = y[tuple(srcs)]
        y = shifted
    if reverse:
        y = np.flip(y, axis=ax)
    return np.array(y, dtype=dt, order="C", copy=None)


@register("CumSum", since=11)
def cumsum(x, axis, *, exclusive=0, reverse=0):
    return _cumulative(np.cumsum, 0, x, axis, exclusive, reverse, "CumSum")


@register("CumProd", since=26)
def cumprod(x, axis, *, exclusive=0, reverse=0):
    return _cumulative(np.cumprod, 1, x, axis, exclusive, reverse, "CumProd")
