"""Activation kernels: Relu family, sigmoid-likes, Gelu, and Softmax / LogSoftmax / Hardmax.

Every kernel keeps the input dtype (Python float attributes are "weak" scalars under
numpy 2 promotion, so float16/float32 stay float16/float32). bfloat16 and other
ml_dtypes floats are computed in float32 and cast back.
"""
from __future__ import annotations

import functools
import math

import ml_dtypes
import numpy as np

from tuili.ops.elementwise import erf as _erf
from tuili.ops.elementwise import is_exotic
from tuili.ops.registry import NodeInfo, prepares, register

_asarray = np.asarray
_BF16 = np.dtype(ml_dtypes.bfloat16)


def _keep_dtype(fn):
    """Run ``fn`` in a dtype numpy can compute in, return the result in the input dtype."""

    @functools.wraps(fn)
    def kernel(x, *args, **kwargs):
        x = _asarray(x)
        dt = x.dtype
        shape = x.shape
        if not shape:
            # numpy turns 0-d results into scalars, which breaks the in-place steps below
            x = x.reshape(1)
        if is_exotic(dt):
            y = fn(x.astype(np.float32), *args, **kwargs)
        else:
            y = fn(x, *args, **kwargs)
        y = _asarray(y)
        if not shape:
            y = y.reshape(())
        return y if y.dtype == dt else y.astype(dt)

    return kernel


def _ignore_legacy(fn):
    """Opset-1 versions carried a ``consumed_inputs`` attribute that has no meaning now."""

    @functools.wraps(fn)
    def kernel(*args, consumed_inputs=None, **kwargs):
        return fn(*args, **kwargs)

    return kernel


def _both(op: str, fn, since: int = 1, *, legacy_until: int = 6) -> None:
    """Register ``fn`` from ``since``; opsets before ``legacy_until`` also accept consumed_inputs."""
    if since < legacy_until:
        register(op, since=since)(_ignore_legacy(fn))
        register(op, since=legacy_until)(fn)
    else:
        register(op, since=since)(fn)


@_keep_dtype
def relu(x):
    return np.maximum(x, x.dtype.type(0))


_both("Relu", relu)


@_keep_dtype
def elu(x, *, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(x))


_both("Elu", elu)


@_keep_dtype
def selu(x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return np.where(x > 0, gamma * x, (gamma * alpha) * np.expm1(x))


_both("Selu", selu)


@register("Celu", since=12)
@_keep_dtype
def celu(x, *, alpha=1.0):
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


@_keep_dtype
def leaky_relu(x, *, alpha=0.01):
    y = x * alpha
    if 0.0 <= alpha <= 1.0:
        return np.maximum(x, y, out=y)  # max(x, a*x) is LeakyRelu for 0 <= a <= 1: 2 passes, no mask
    return np.where(x >= 0, x, y)


_both("LeakyRelu", leaky_relu)


@_keep_dtype
def prelu(x, slope):
    slope = _asarray(slope)
    if slope.dtype != x.dtype:
        slope = slope.astype(x.dtype)
    return np.where(x >= 0, x, x * slope)


def prelu_legacy(x, slope, *, consumed_inputs=None):
    """Opsets 1-6: a 1-D slope of size C applies per channel (axis 1), not along the last axis."""
    x = _asarray(x)
    slope = _asarray(slope)
    if slope.ndim == 1 and slope.size > 1 and x.ndim > 2 and slope.shape[0] == x.shape[1]:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return prelu(x, slope)


register("PRelu", since=1)(prelu_legacy)
register("PRelu", since=7)(prelu)


@_keep_dtype
def hard_sigmoid(x, *, alpha=0.2, beta=0.5):
    y = x * alpha
    y += beta
    np.clip(y, 0, 1, out=y)
    return y


_both("HardSigmoid", hard_sigmoid)


@register("HardSwish", since=14)
@_keep_dtype
def hard_swish(x):
    y = x * (1.0 / 6.0)
    y += 0.5
    np.clip(y, 0, 1, out=y)
    y *= x
    return y


@register("Softplus", since=1)
@_keep_dtype
def softplus(x):
    return np.logaddexp(x.dtype.type(0), x)


@register("Softsign", since=1)
@_keep_dtype
def softsign(x):
    return x / (1 + np.abs(x))


@register("ThresholdedRelu", since=10)
@_keep_dtype
def thresholded_relu(x, *, alpha=1.0):
    return np.where(x > alpha, x, x.dtype.type(0))


@register("Shrink", since=9)
def shrink(x, *, bias=0.0, lambd=0.5):
    x = _asarray(x)
    dt = x.dtype
    xf = x.astype(np.float32) if is_exotic(dt) else x
    y = np.where(xf < -lambd, xf + bias, np.where(xf > lambd, xf - bias, 0))
    return _asarray(y).astype(dt, copy=False)


@register("Mish", since=18)
@_keep_dtype
def mish(x):
    return x * np.tanh(np.logaddexp(x.dtype.type(0), x))


def _sigmoid(x):
    """1 / (1 + exp(-x)) in place on one buffer: 4 SIMD passes, accurate in the tails
    (exp overflow for x < -88 gives exactly 0)."""
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    y = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(y, out=y)
    y += 1
    np.reciprocal(y, out=y)
    return y


@register("Swish", since=24)
@_keep_dtype
def swish(x, *, alpha=1.0):
    return x * _sigmoid(x * alpha if alpha != 1.0 else x)


@register("Gelu", since=20)
@_keep_dtype
def gelu(x, *, approximate="none"):
    if approximate == "tanh":
        inner = x * x
        inner *= 0.044715
        inner += 1.0
        inner *= x
        inner *= math.sqrt(2.0 / math.pi)
        y = np.tanh(inner)
    else:
        y = _erf(x * (1.0 / math.sqrt(2.0)))
    y += 1.0
    y *= x
    y *= 0.5
    return y


def on_torch(generic, approximate: str = "none"):
    """A float32 Gelu on torch's kernel (falling back to ``generic`` for other dtypes), or None."""
    from tuili.ops._torch import gelu_on_torch

    run = gelu_on_torch(approximate)
    if run is None:
        return None

    def gelu_torch(x, **attrs):
        return run(x) if x.dtype == np.float32 else generic(x, **attrs)

    return gelu_torch


@prepares(gelu)
def prepare_gelu(info: NodeInfo):
    return on_torch(gelu, info.attrs.get("approximate", "none")) if info.float32_or_unknown(0) else None


@_keep_dtype
def sigmoid(x):
    return _sigmoid(x)


_both("Sigmoid", sigmoid)


# ----------------------------------------------------------------------------------------------
# Softmax family


def _softmax_nd(x: np.ndarray, axis: int) -> np.ndarray:
    y = np.subtract(x, x.max(axis=axis, keepdims=True))
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
    return y


def _log_softmax_nd(x: np.ndarray, axis: int) -> np.ndarray:
    y = np.subtract(x, x.max(axis=axis, keepdims=True))
    y -= np.log(np.exp(y).sum(axis=axis, keepdims=True))
    return y


def _hardmax_nd(x: np.ndarray, axis: int) -> np.ndarray:
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


def _coerce_2d(fn):
    """Opset < 13: treat the input as 2-D [prod(shape[:axis]), prod(shape[axis:])], reduce over dim 1."""

    def kernel(x, *, axis=1):
        x = _asarray(x)
        if x.ndim == 0:
            return fn(x.reshape(1, 1), 1).reshape(())
        ax = axis if axis >= 0 else axis + x.ndim
        n = int(np.prod(x.shape[:ax], dtype=np.int64))
        return fn(x.reshape(n, -1) if x.size else x.reshape(n, int(np.prod(x.shape[ax:]))), 1).reshape(x.shape)

    return _keep_dtype(kernel)


def _per_axis(fn):
    def kernel(x, *, axis=-1):
        x = _asarray(x)
        if x.ndim == 0:
            return fn(x.reshape(1), 0).reshape(())
        return fn(x, axis)

    wrapped = _keep_dtype(kernel)

    def dispatch(x, *, axis=-1):
        x = _asarray(x)
        if x.dtype == _BF16 and fn is not _hardmax_nd:
            # bfloat16 softmax rounds every step to bfloat16 (ml_dtypes arithmetic), as the ONNX
            # reference and its expanded function bodies do; float32-then-round differs by an ulp
            return kernel(x, axis=axis)
        return wrapped(x, axis=axis)

    return dispatch


for _op, _fn in [("Softmax", _softmax_nd), ("LogSoftmax", _log_softmax_nd), ("Hardmax", _hardmax_nd)]:
    register(_op, since=1)(_coerce_2d(_fn))
    register(_op, since=13)(_per_axis(_fn))
