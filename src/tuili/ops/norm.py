"""Normalization family: BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization, LRN, LpNormalization, MeanVarianceNormalization,
Dropout.

Float32 stays float32. ``stash_type`` (LayerNormalization, GroupNormalization-21,
RMSNormalization) picks the dtype statistics are computed in.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from tuili.errors import KernelError
from tuili.ops._numba import HAVE_NUMBA as _HAVE_NUMBA
from tuili.ops._numba import numba
from tuili.ops.registry import NodeInfo, prepares, register

log = logging.getLogger(__name__)


if _HAVE_NUMBA:
    # reassoc lets LLVM vectorize the row reductions; NaN/inf semantics are kept.
    _FM = {"reassoc", "contract"}

    @numba.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
    def _row_moments(x, i):  # pragma: no cover - compiled
        """Mean of row i of x and the sum of its squared deviations from that mean."""
        d = x.shape[1]
        s = 0.0
        for j in range(d):
            s += x[i, j]
        m = s / d
        v = 0.0
        for j in range(d):
            t = x[i, j] - m
            v += t * t
        return m, v

    @numba.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
    def _ln_rows(x, scale, bias, eps, y, mean_out, inv_out):  # pragma: no cover - compiled
        n, d = x.shape
        for i in range(n):
            m, v = _row_moments(x, i)
            inv = 1.0 / np.sqrt(v / d + eps)
            for j in range(d):
                y[i, j] = (x[i, j] - m) * inv * scale[j] + bias[j]
            mean_out[i] = m
            inv_out[i] = inv

    @numba.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
    def _in_rows(x, scale, bias, eps, y):  # pragma: no cover - compiled
        # row i of (N*C, L) belongs to channel i % C; scale/bias are per channel
        n, d = x.shape
        c = scale.shape[0]
        for i in range(n):
            m, v = _row_moments(x, i)
            a = scale[i % c] / np.sqrt(v / d + eps)
            b = bias[i % c] - m * a
            for j in range(d):
                y[i, j] = x[i, j] * a + b

    @numba.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
    def _affine_rows(x, a, b, y):  # pragma: no cover - compiled
        # y = x * a[c] + b[c] for rows of (N*C, L), row i in channel i % C: one pass
        n, d = x.shape
        c = a.shape[0]
        for i in range(n):
            ai = a[i % c]
            bi = b[i % c]
            for j in range(d):
                y[i, j] = x[i, j] * ai + bi

    @numba.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
    def _rms_rows(x, scale, eps, y):  # pragma: no cover - compiled
        n, d = x.shape
        for i in range(n):
            v = 0.0
            for j in range(d):
                v += x[i, j] * x[i, j]
            inv = 1.0 / np.sqrt(v / d + eps)
            for j in range(d):
                y[i, j] = x[i, j] * inv * scale[j]


def _rowwise_ok(xc: np.ndarray, ax: int, *params) -> bool:
    """Can the fused numba row kernel take this case (float32/64, params of the row size)?"""
    if not _HAVE_NUMBA or xc.dtype not in (np.float32, np.float64) or xc.size == 0:
        return False
    d = int(np.prod(xc.shape[ax:]))
    return all(p is None or (p.size == d and p.dtype == xc.dtype) for p in params)

_STASH = {1: np.float32, 10: np.float16, 11: np.float64}


def _stash_dtype(stash_type: int, x: np.ndarray, op: str):
    if stash_type not in _STASH:
        if stash_type == 16:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        raise KernelError(f"{op}: unsupported stash_type {stash_type}; use 1 (float), 10 (float16) or 11 (double)")
    return np.dtype(_STASH[stash_type])


def _axis_and_stash(ctx, op: str, x: np.ndarray, axis: int, stash_type: int):
    """For the ops normalizing over axes [axis, rank): the non-negative axis (checked) and the
    dtype the statistics are computed in."""
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise KernelError(f"{op} node {ctx.node_name!r}: axis {axis} out of range for input shape {x.shape}")
    return ax, _stash_dtype(stash_type, x, op)


def _channel_shape(p: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel (C,) parameter reshaped to broadcast against (N, C, D1, ...)."""
    p = np.asarray(p)
    if p.ndim == 1:
        return p.reshape((-1,) + (1,) * (ndim - 2))
    return p  # spatial=0 style (C, D1, ...) already broadcasts against trailing dims


# ---------------------------------------------------------------- BatchNormalization


def _bn_inference(x, scale, b, mean, var, epsilon):
    dt = x.dtype
    nd = x.ndim
    inv = (np.asarray(var, dtype=np.float64) + epsilon) ** -0.5
    a = np.asarray(scale, dtype=np.float64) * inv
    c = np.asarray(b, dtype=np.float64) - np.asarray(mean, dtype=np.float64) * a
    if a.ndim == 1 and nd >= 2 and a.size == x.shape[1] and _rowwise_ok(x, 2):
        n = x.shape[0] * x.shape[1]
        y = np.empty(x.shape, dtype=dt)
        _affine_rows(np.ascontiguousarray(x).reshape(n, -1), a.astype(dt), c.astype(dt), y.reshape(n, -1))
        return y
    a = _channel_shape(a.astype(dt), nd)
    c = _channel_shape(c.astype(dt), nd)
    y = x * a
    y += c
    return y


@register("BatchNormalization", since=1)
def batch_normalization(ctx, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1, is_test=0, consumed_inputs=None):
    # Before opset 14 runtimes (and exporters) treat BatchNormalization as inference-only.
    y = _bn_inference(x, scale, b, mean, var, epsilon)
    if ctx.num_outputs > 1:
        log.debug("BatchNormalization %s: training outputs requested at opset %d; returning running stats", ctx.node_name, ctx.opset)
        return (y, mean, var, mean, var)[: ctx.num_outputs]
    return y


@register("BatchNormalization", since=14)
def batch_normalization_14(ctx, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    if not training_mode:
        return _bn_inference(x, scale, b, mean, var, epsilon)
    dt = x.dtype
    axes = (0,) + tuple(range(2, x.ndim))
    xc = x.astype(np.float32) if dt.itemsize < 4 else x
    cur_mean = xc.mean(axis=axes)
    cur_var = xc.var(axis=axes)
    shp = (-1,) + (1,) * (x.ndim - 2)
    y = (xc - cur_mean.reshape(shp)) / np.sqrt(cur_var.reshape(shp) + epsilon) * np.asarray(scale).reshape(shp) + np.asarray(b).reshape(shp)
    y = y.astype(dt, copy=False)
    run_mean = (mean * momentum + cur_mean * (1 - momentum)).astype(mean.dtype, copy=False)
    run_var = (var * momentum + cur_var * (1 - momentum)).astype(var.dtype, copy=False)
    if ctx.num_outputs == 1:
        return y
    return (y, run_mean, run_var)[: ctx.num_outputs]


# ---------------------------------------------------------------- Instance / Layer / Group / RMS


@register("InstanceNormalization", since=1)
def instance_normalization(x, scale, b, *, epsilon=1e-5):
    sc = np.asarray(scale).reshape(-1)
    bc = np.asarray(b).reshape(-1)
    if x.ndim >= 3 and sc.size == x.shape[1] and bc.size == x.shape[1] and _rowwise_ok(x, 2):
        n = x.shape[0] * x.shape[1]
        y = np.empty(x.shape, dtype=x.dtype)
        _in_rows(np.ascontiguousarray(x).reshape(n, -1), sc.astype(x.dtype), bc.astype(x.dtype), float(epsilon), y.reshape(n, -1))
        return y
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    d *= (1 / np.sqrt(var + x.dtype.type(epsilon))).astype(x.dtype, copy=False)
    nd = x.ndim
    d *= _channel_shape(scale, nd).astype(x.dtype, copy=False)
    d += _channel_shape(b, nd).astype(x.dtype, copy=False)
    return d


@register("LayerNormalization", since=17)
def layer_normalization(ctx, x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    dt = x.dtype
    ax, sd = _axis_and_stash(ctx, "LayerNormalization", x, axis, stash_type)
    xc = x.astype(sd, copy=False)
    stat_shape = x.shape[:ax] + (1,) * (x.ndim - ax)
    sc = np.asarray(scale).astype(sd, copy=False)
    bc = None if b is None else np.asarray(b).astype(sd, copy=False)
    if _rowwise_ok(xc, ax, sc, bc):
        d = int(np.prod(x.shape[ax:]))
        n = xc.size // d
        y = np.empty((n, d), dtype=sd)
        mean = np.empty(n, dtype=sd)
        inv = np.empty(n, dtype=sd)
        bias = bc.reshape(-1) if bc is not None else np.zeros(d, dtype=sd)
        _ln_rows(np.ascontiguousarray(xc).reshape(n, d), sc.reshape(-1), bias, float(epsilon), y, mean, inv)
        y = y.reshape(x.shape).astype(dt, copy=False)
        mean = mean.reshape(stat_shape)
        inv = inv.reshape(stat_shape)
    else:
        y, mean, inv = _layer_norm_numpy(xc, ax, scale, b, epsilon, dt)
    if ctx.num_outputs == 1:
        return y
    return (y, mean, inv)[: ctx.num_outputs]


@prepares(layer_normalization)
def prepare_layer_normalization(info: NodeInfo):
    """Plan time: LayerNormalization over the last axis of a float32 input with constant 1-D scale and
    bias on torch's kernel (a transformer's runs stay on one thread pool); None keeps numpy/numba."""
    from tuili.ops._torch import layer_norm_on_torch

    a = info.attrs
    scale = info.consts[1]
    b_given = len(info.given) > 2 and info.given[2]
    bias = info.consts[2] if b_given else None
    rank = None if info.shapes[0] is None else len(info.shapes[0])
    axis = a.get("axis", -1)
    if (info.dtypes[0] != np.dtype(np.float32) or a.get("stash_type", 1) != 1 or (b_given and bias is None)
            or not isinstance(scale, np.ndarray) or scale.ndim != 1
            or (bias is not None and (bias.ndim != 1 or bias.size != scale.size))
            or not (axis == -1 or (rank is not None and axis == rank - 1))):
        return None
    run = layer_norm_on_torch(scale, bias, float(a.get("epsilon", 1e-5)))
    if run is None:
        return None

    def layer_norm_torch(ctx, x, scale_, b_=None, **attrs):
        if ctx.num_outputs == 1 and x.dtype == np.float32 and x.ndim >= 1 and x.shape[-1] == scale.size:
            return run(x)
        return layer_normalization(ctx, x, scale_, b_, **attrs)

    return layer_norm_torch


def _layer_norm_numpy(xc, ax, scale, b, epsilon, dt):
    sd = xc.dtype
    axes = tuple(range(ax, xc.ndim))
    mean = xc.mean(axis=axes, keepdims=True)
    d = xc - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + sd.type(epsilon))
    d *= inv
    if sd != dt:
        d = d.astype(dt)
    y = d * scale
    if b is not None:
        y += b
    return y.astype(dt, copy=False), mean, inv


def _group_norm(x, num_groups, scale, b, epsilon, sd, per_group):
    dt = x.dtype
    n, c = x.shape[:2]
    if c % num_groups:
        raise KernelError(f"GroupNormalization: channels {c} (input {x.shape}) not divisible by num_groups={num_groups}")
    xr = x.reshape(n, num_groups, -1).astype(sd, copy=False)
    mean = xr.mean(axis=-1, keepdims=True)
    d = xr - mean
    var = np.mean(d * d, axis=-1, keepdims=True)
    d *= 1 / np.sqrt(var + sd.type(epsilon))
    d = d.astype(dt, copy=False).reshape(x.shape)
    if per_group:
        scale = np.repeat(np.asarray(scale), c // num_groups)
        b = np.repeat(np.asarray(b), c // num_groups)
    nd = x.ndim
    y = d * _channel_shape(scale, nd) + _channel_shape(b, nd)
    return y.astype(dt, copy=False)


@register("GroupNormalization", since=18)
def group_normalization_18(x, scale, b, *, epsilon=1e-5, num_groups=None):
    return _group_norm(x, num_groups, scale, b, epsilon, np.dtype(x.dtype), per_group=True)


@register("GroupNormalization", since=21)
def group_normalization_21(x, scale, b, *, epsilon=1e-5, num_groups=None, stash_type=1):
    sd = _stash_dtype(stash_type, x, "GroupNormalization")
    return _group_norm(x, num_groups, scale, b, epsilon, sd, per_group=False)


@register("RMSNormalization", since=23)
def rms_normalization(ctx, x, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    dt = x.dtype
    ax, sd = _axis_and_stash(ctx, "RMSNormalization", x, axis, stash_type)
    xc = x.astype(sd, copy=False)
    sc = np.asarray(scale)
    if sd == dt and _rowwise_ok(xc, ax, sc):
        d = int(np.prod(x.shape[ax:]))
        n = xc.size // d
        y = np.empty((n, d), dtype=sd)
        _rms_rows(np.ascontiguousarray(xc).reshape(n, d), sc.reshape(-1), float(epsilon), y)
        return y.reshape(x.shape)
    ms = np.mean(xc * xc, axis=tuple(range(ax, x.ndim)), keepdims=True)
    y = xc * (1 / np.sqrt(ms + sd.type(epsilon)))
    y = y.astype(dt, copy=False) * scale
    return y.astype(dt, copy=False)


# ---------------------------------------------------------------- LRN / Lp / MVN


@register("LRN", since=1)
def lrn(x, *, alpha=1e-4, beta=0.75, bias=1.0, size=None):
    if size is None:
        raise KernelError("LRN: the size attribute is required")
    c = x.shape[1]
    lo = math.floor((size - 1) / 2)
    hi = math.ceil((size - 1) / 2)
    sq = (x * x).astype(x.dtype, copy=False)
    # windowed channel sum through a cumulative sum along axis 1
    cs = np.cumsum(sq, axis=1, dtype=np.float64)  # float64: differences of prefix sums stay exact enough
    zero = np.zeros_like(cs[:, :1])
    cs = np.concatenate([zero, cs], axis=1)
    idx = np.arange(c)
    start = np.maximum(0, idx - lo)
    end = np.minimum(c, idx + hi + 1)
    ssum = np.take(cs, end, axis=1) - np.take(cs, start, axis=1)
    y = x / (x.dtype.type(bias) + x.dtype.type(alpha / size) * ssum.astype(x.dtype)) ** x.dtype.type(beta)
    return y.astype(x.dtype, copy=False)


@register("LpNormalization", since=1)
def lp_normalization(x, *, axis=-1, p=2):
    if p == 1:
        norm = np.sum(np.abs(x), axis=axis, keepdims=True)
    elif p == 2:
        norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    else:
        raise KernelError(f"LpNormalization: p must be 1 or 2, got {p}")
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(norm == 0, np.zeros((), x.dtype), x / norm)
    return y.astype(x.dtype, copy=False)


@register("MeanVarianceNormalization", since=9)
def mean_variance_normalization(x, *, axes=(0, 2, 3)):
    axes = tuple(axes)
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    std = np.sqrt(np.mean(d * d, axis=axes, keepdims=True))
    return (d / (std + x.dtype.type(1e-9))).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- Dropout


def _dropout(ctx, x, ratio, training, seed):
    want_mask = ctx.num_outputs >= 2
    if not training or ratio == 0:
        if want_mask:
            return x, np.ones(x.shape, dtype=bool)
        return x
    if not 0 <= ratio < 1:
        raise KernelError(f"Dropout node {ctx.node_name!r}: ratio must be in [0, 1), got {ratio}")
    # Deterministic for a given seed: numpy's MT19937 RandomState uniform stream.
    rng = np.random.RandomState(seed) if seed is not None else np.random.RandomState()
    keep = rng.uniform(0.0, 1.0, x.shape) >= ratio
    y = np.where(keep, x * x.dtype.type(1.0 / (1.0 - ratio)), np.zeros((), x.dtype)).astype(x.dtype, copy=False)
    return (y, keep) if want_mask else y


@register("Dropout", since=1)
def dropout_1(ctx, x, *, is_test=0, ratio=0.5, consumed_inputs=None):
    # Inference engines run Dropout as identity; the legacy mask output had x's dtype.
    if ctx.num_outputs >= 2:
        mask = np.ones(x.shape, dtype=bool if ctx.opset >= 10 else x.dtype)
        return x, mask
    return x


@register("Dropout", since=12)
def dropout_12(ctx, x, ratio=None, training_mode=None, *, seed=None):
    r = 0.5 if ratio is None else float(np.asarray(ratio))
    training = bool(np.asarray(training_mode)) if training_mode is not None else False
    return _dropout(ctx, x, r, training, seed)
