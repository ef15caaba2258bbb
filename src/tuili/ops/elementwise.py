"""Elementwise kernels: unary math, binary arithmetic / comparison / logic / bitwise,
variadic Max/Min/Mean/Sum, Clip and Where.

Output dtypes follow ONNX exactly: every arithmetic op keeps its (common) input
dtype, comparisons return bool. Exotic float types (bfloat16, float8*) are
computed in float32 and cast back, since numpy has no native loops for them.
Results are always ndarrays (numpy returns scalars for 0-d inputs; we wrap).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special as _special

from tuili.errors import KernelError
from tuili.ops.registry import register

_asarray = np.asarray


def is_exotic(dt: np.dtype) -> bool:
    """True for ml_dtypes types (bfloat16, float8*, float4, int4, ...) numpy cannot compute in."""
    return dt.kind == "V"  # every ml_dtypes type registers as a void-kind dtype


# ----------------------------------------------------------------------------------------------
# erf: scipy's erf is scalar code (~25 ns/element); BERT-style GELU runs it over millions of
# elements, so float32 uses a rational approximation (|error| < 5e-7, same form as the one XLA
# and Eigen use) compiled with numba. Other dtypes go to scipy.

_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_erf_f32_kernel = None


def _build_erf_f32():
    import numba

    p0, p1, p2, p3, p4, p5, p6 = (np.float32(c) for c in _ERF_P)
    q0, q1, q2, q3, q4 = (np.float32(c) for c in _ERF_Q)
    lo, hi = np.float32(-4.0), np.float32(4.0)

    @numba.njit(error_model="numpy", cache=True, nogil=True)
    def erf_f32(x, out):  # pragma: no cover - compiled
        for i in range(x.size):
            v = x[i]
            if v != v:
                out[i] = v
                continue
            v = min(max(v, lo), hi)
            v2 = v * v
            p = ((((((v2 * p0 + p1) * v2 + p2) * v2 + p3) * v2 + p4) * v2 + p5) * v2 + p6) * v
            q = (((v2 * q0 + q1) * v2 + q2) * v2 + q3) * v2 + q4
            out[i] = p / q

    return erf_f32


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise erf keeping float32 / float16 / float64."""
    global _erf_f32_kernel
    x = _asarray(x)
    if x.dtype == np.float32 and x.size >= 256:
        if _erf_f32_kernel is None:
            _erf_f32_kernel = _build_erf_f32()
        src = np.ascontiguousarray(x).reshape(-1)
        out = np.empty(x.shape, np.float32)
        _erf_f32_kernel(src, out.reshape(-1))
        return out
    return _special.erf(x)


def _float_unary(fn):
    """Wrap a numpy float function so it keeps the input dtype (and copes with bfloat16)."""

    def kernel(x, **_legacy):
        x = _asarray(x)
        if is_exotic(x.dtype):
            return _asarray(fn(x.astype(np.float32))).astype(x.dtype)
        y = fn(x)
        if y.dtype != x.dtype:
            y = y.astype(x.dtype)
        return _asarray(y)

    kernel.__name__ = getattr(fn, "__name__", "unary")
    return kernel


def _reg_unary(op: str, fn, since: int = 1) -> None:
    register(op, since=since)(_float_unary(fn))


for _op, _fn, _since in [
    ("Abs", np.abs, 1),
    ("Neg", np.negative, 1),
    ("Acos", np.arccos, 7),
    ("Acosh", np.arccosh, 9),
    ("Asin", np.arcsin, 7),
    ("Asinh", np.arcsinh, 9),
    ("Atan", np.arctan, 7),
    ("Atanh", np.arctanh, 9),
    ("Ceil", np.ceil, 1),
    ("Floor", np.floor, 1),
    ("Cos", np.cos, 7),
    ("Cosh", np.cosh, 9),
    ("Sin", np.sin, 7),
    ("Sinh", np.sinh, 9),
    ("Tan", np.tan, 7),
    ("Tanh", np.tanh, 1),
    ("Erf", erf, 9),
    ("Exp", np.exp, 1),
    ("Log", np.log, 1),
    ("Sqrt", np.sqrt, 1),
    ("Sign", np.sign, 9),
    ("Round", np.round, 11),  # numpy rounds half to even, as ONNX requires
]:
    _reg_unary(_op, _fn, _since)


@register("Reciprocal", since=1)
def reciprocal(x, **_legacy):
    x = _asarray(x)
    if is_exotic(x.dtype):
        return _asarray(np.reciprocal(x.astype(np.float32))).astype(x.dtype)
    if x.dtype.kind in "iu":
        with np.errstate(divide="ignore"):
            return _asarray(1.0 / x.astype(np.float64)).astype(x.dtype)
    return _asarray(np.reciprocal(x))


@register("Not", since=1)
def not_(x):
    return _asarray(np.logical_not(x))


@register("IsNaN", since=9)
def isnan(x):
    x = _asarray(x)
    if is_exotic(x.dtype):
        x = x.astype(np.float32)
    return _asarray(np.isnan(x))


@register("IsInf", since=10)
def isinf(x, *, detect_negative=1, detect_positive=1):
    x = _asarray(x)
    if is_exotic(x.dtype):
        x = x.astype(np.float32)
    if detect_negative and detect_positive:
        return _asarray(np.isinf(x))
    if detect_positive:
        return _asarray(np.isposinf(x))
    if detect_negative:
        return _asarray(np.isneginf(x))
    return np.zeros(x.shape, dtype=bool)


# ----------------------------------------------------------------------------------------------
# binary ops


def legacy_broadcast(a: np.ndarray, b: np.ndarray, broadcast: int, axis) -> np.ndarray:
    """Opset < 7 broadcasting: B's dims align with A's starting at ``axis`` (default: suffix)."""
    if broadcast and axis is not None and b.ndim and b.ndim < a.ndim:
        ax = axis if axis >= 0 else axis + a.ndim
        shape = [1] * a.ndim
        shape[ax : ax + b.ndim] = b.shape
        return b.reshape(shape)
    return b


def _legacy_call(modern, a, b, broadcast, axis):
    """Run an opset >= 7 kernel on inputs given with the opset < 7 broadcast/axis attributes."""
    a = _asarray(a)
    return modern(a, legacy_broadcast(a, _asarray(b), broadcast, axis))


def _register_versions(op_name: str, modern, legacy, since_legacy: int, since_modern: int):
    """Register ``legacy`` from since_legacy (when that is older than since_modern) and ``modern``
    from since_modern, both named after the op."""
    modern.__name__ = legacy.__name__ = op_name.lower()
    if since_legacy < since_modern:
        register(op_name, since=since_legacy)(legacy)
    register(op_name, since=since_modern)(modern)


def _binary(op_name: str, fn, since_legacy: int, since_modern: int, *, fix_dtype: bool = True):
    def modern(a, b):
        a = _asarray(a)
        b = _asarray(b)
        if is_exotic(a.dtype):
            return _asarray(fn(a.astype(np.float32), b.astype(np.float32))).astype(a.dtype)
        y = fn(a, b)
        if fix_dtype and y.dtype != a.dtype:
            y = y.astype(a.dtype)
        return _asarray(y)

    def legacy(a, b, *, broadcast=0, axis=None, consumed_inputs=None):
        return _legacy_call(modern, a, b, broadcast, axis)

    _register_versions(op_name, modern, legacy, since_legacy, since_modern)


_binary("Add", np.add, 1, 7)
_binary("Sub", np.subtract, 1, 7)
_binary("Mul", np.multiply, 1, 7)


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C semantics), as ONNX Div requires."""
    if a.dtype.kind == "u":
        with np.errstate(divide="ignore"):
            return np.floor_divide(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.fmod(a, b)
        return (a - r) // b


def _div(a, b):
    if a.dtype.kind in "iu":
        return _int_div(a, b)
    return np.divide(a, b)


_binary("Div", _div, 1, 7)


def _pow_core(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if y.size == 1 and y.ndim <= x.ndim and x.dtype.kind == "f" and y.dtype.kind in "fiu":
        e = float(y.reshape(-1)[0])
        if e == 2.0:
            return np.square(x)
        if e == 1.0:
            return x.copy()
    if x.dtype.kind in "iu":
        if y.dtype.kind == "f" or (y.dtype.kind == "i" and (y < 0).any()):
            with np.errstate(all="ignore"):
                return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
        return np.power(x, y.astype(x.dtype, copy=False)).astype(x.dtype, copy=False)
    if y.dtype != x.dtype:
        # float base: compute in the wider of the two, result in the base dtype
        return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
    return np.power(x, y)


@register("Pow", since=1)
def pow_legacy(x, y, *, broadcast=0, axis=None):
    return _legacy_call(pow_, x, y, broadcast, axis)


@register("Pow", since=7)
def pow_(x, y):
    x = _asarray(x)
    y = _asarray(y)
    if is_exotic(x.dtype):
        return _asarray(_pow_core(x.astype(np.float32), y.astype(np.float32))).astype(x.dtype)
    if is_exotic(y.dtype):
        y = y.astype(np.float32)
    return _asarray(_pow_core(x, y)).astype(x.dtype, copy=False)


@register("Mod", since=10)
def mod(a, b, *, fmod=0):
    a = _asarray(a)
    b = _asarray(b)
    dt = a.dtype
    if is_exotic(dt):
        a, b = a.astype(np.float32), b.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        if fmod or a.dtype.kind == "f":
            # floats always use C fmod semantics (sign of the dividend) unless fmod=0 on ints
            y = np.fmod(a, b) if fmod else np.mod(a, b)
        else:
            y = np.mod(a, b)
    return _asarray(y).astype(dt, copy=False)


@register("BitShift", since=11)
def bitshift(x, y, *, direction):
    x = _asarray(x)
    y = _asarray(y)
    bits = x.dtype.itemsize * 8
    if y.dtype.kind == "i":
        big = (y < 0) | (y >= bits)
    else:
        big = y >= bits
    s = np.where(big, 0, y).astype(x.dtype)
    if direction == "LEFT":
        out = np.left_shift(x, s)
        fill = np.zeros((), x.dtype)
    elif direction == "RIGHT":
        out = np.right_shift(x, s)
        fill = np.right_shift(x, np.array(bits - 1, x.dtype)) if x.dtype.kind == "i" else np.zeros((), x.dtype)
    else:
        raise KernelError(f"BitShift: direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    if big.any():
        out = np.where(big, fill, out)
    return _asarray(out).astype(x.dtype, copy=False)


def _compare(op_name: str, fn, since_legacy: int, since_modern: int):
    def modern(a, b):
        a = _asarray(a)
        b = _asarray(b)
        if is_exotic(a.dtype):
            a = a.astype(np.float32)
        if is_exotic(b.dtype):
            b = b.astype(np.float32)
        return _asarray(fn(a, b)).astype(bool, copy=False)

    def legacy(a, b, *, broadcast=0, axis=None):
        return _legacy_call(modern, a, b, broadcast, axis)

    _register_versions(op_name, modern, legacy, since_legacy, since_modern)


_compare("Equal", np.equal, 1, 7)
_compare("Greater", np.greater, 1, 7)
_compare("Less", np.less, 1, 7)
_compare("GreaterOrEqual", np.greater_equal, 12, 12)
_compare("LessOrEqual", np.less_equal, 12, 12)
_compare("And", np.logical_and, 1, 7)
_compare("Or", np.logical_or, 1, 7)
_compare("Xor", np.logical_xor, 1, 7)


@register("BitwiseAnd", since=18)
def bitwise_and(a, b):
    return _asarray(np.bitwise_and(a, b))


@register("BitwiseOr", since=18)
def bitwise_or(a, b):
    return _asarray(np.bitwise_or(a, b))


@register("BitwiseXor", since=18)
def bitwise_xor(a, b):
    return _asarray(np.bitwise_xor(a, b))


@register("BitwiseNot", since=18)
def bitwise_not(x):
    return _asarray(np.bitwise_not(x))


# ----------------------------------------------------------------------------------------------
# variadic


def _variadic(fn, inputs):
    arrs = [_asarray(x) for x in inputs if x is not None]
    if not arrs:
        raise KernelError("variadic op needs at least one input")
    dt = arrs[0].dtype
    if is_exotic(dt):
        arrs = [a.astype(np.float32) for a in arrs]
    if len(arrs) == 1:
        out = arrs[0].copy()
    else:
        out = fn(arrs[0], arrs[1])
        for a in arrs[2:]:
            if out.shape == np.broadcast_shapes(out.shape, a.shape):
                fn(out, a, out=out)
            else:
                out = fn(out, a)
    return _asarray(out).astype(dt, copy=False), len(arrs)


@register("Max", since=1)
def max_(*inputs, consumed_inputs=None):
    return _variadic(np.maximum, inputs)[0]


@register("Min", since=1)
def min_(*inputs, consumed_inputs=None):
    return _variadic(np.minimum, inputs)[0]


@register("Sum", since=1)
def sum_(*inputs, consumed_inputs=None):
    return _variadic(np.add, inputs)[0]


@register("Mean", since=1)
def mean(*inputs, consumed_inputs=None):
    arrs = [_asarray(x) for x in inputs if x is not None]
    dt = arrs[0].dtype
    acc_dt = np.float32 if (is_exotic(dt) or dt == np.float16) else None
    if acc_dt is not None:
        arrs = [a.astype(acc_dt) for a in arrs]
    total, n = _variadic(np.add, arrs)
    if total.dtype.kind in "iu":
        return _asarray(total // n).astype(dt, copy=False)
    total = total / np.asarray(n, total.dtype)
    return _asarray(total).astype(dt, copy=False)


# ----------------------------------------------------------------------------------------------
# Clip / Where


def _clip(x: np.ndarray, lo, hi) -> np.ndarray:
    dt = x.dtype
    if is_exotic(dt):
        return _clip(x.astype(np.float32), lo, hi).astype(dt)
    if lo is None and hi is None:
        return x.copy()
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo = info.min if lo is None else lo
        hi = info.max if hi is None else hi
        return _asarray(np.clip(x, _asarray(lo).astype(dt), _asarray(hi).astype(dt)))
    lo = -np.inf if lo is None else lo
    hi = np.inf if hi is None else hi
    # one SIMD pass; NaN propagates; lo > hi gives hi everywhere, as ONNX specifies
    return _asarray(np.clip(x, _asarray(lo).astype(dt), _asarray(hi).astype(dt)))


@register("Clip", since=1)
def clip_attr(x, *, min=-math.inf, max=math.inf, consumed_inputs=None):  # noqa: A002
    x = _asarray(x)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        min = info.min if min == -math.inf else int(min)  # noqa: A001
        max = info.max if max == math.inf else int(max)  # noqa: A001
    return _clip(x, None if min == -math.inf else min, None if max == math.inf else max)


@register("Clip", since=11)
def clip(x, min=None, max=None):  # noqa: A002
    x = _asarray(x)
    lo = None if min is None or _asarray(min).size == 0 else min
    hi = None if max is None or _asarray(max).size == 0 else max
    return _clip(x, lo, hi)


@register("Where", since=9)
def where(cond, x, y):
    return _asarray(np.where(cond, x, y))
