"""Quantization kernels: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearMatMul.

Granularity follows the scale's shape: scalar (per tensor), 1-D (per axis) or
same rank as x (blocked along ``axis`` with ``block_size``). Integer targets are
rounded half-to-even and saturated; float8 / float4 / int4 / int2 targets are
ml_dtypes types (what onnx.numpy_helper produces).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from tuili.errors import KernelError, ShapeInferenceError
from tuili.ops._numba import HAVE_NUMBA as _HAVE_NUMBA
from tuili.ops._numba import numba
from tuili.ops.registry import register

if _HAVE_NUMBA:
    # One fused pass for the per-tensor 8-bit case that QDQ models run on every activation.
    # No fastmath: x / scale must stay a true division, rint must round half to even.
    @numba.njit(cache=True, nogil=True)
    def _quantize8_nb(x, scale, zp, lo, hi, out):  # pragma: no cover - compiled
        for i in range(x.size):
            v = np.rint(x[i] / scale) + zp
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            out[i] = v
        return out

    @numba.njit(cache=True, nogil=True)
    def _dequantize8_nb(x, scale, zp, out):  # pragma: no cover - compiled
        for i in range(x.size):
            out[i] = (np.float32(x[i]) - zp) * scale
        return out

_Q8 = (np.dtype(np.uint8), np.dtype(np.int8))

_INT_RANGES = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(ml_dtypes.uint4): (0, 15),
    np.dtype(ml_dtypes.int4): (-8, 7),
    np.dtype(ml_dtypes.uint2): (0, 3),
    np.dtype(ml_dtypes.int2): (-2, 1),
}
_FLOAT8 = {
    np.dtype(ml_dtypes.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e4m3fnuz),
    np.dtype(ml_dtypes.float8_e5m2),
    np.dtype(ml_dtypes.float8_e5m2fnuz),
}
_SMALL_FLOATS = {
    np.dtype(ml_dtypes.float4_e2m1fn),
    np.dtype(ml_dtypes.float6_e2m3fn),
    np.dtype(ml_dtypes.float6_e3m2fn),
}


def _same_layout(x: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x's elements in memory order as a 1-D view, a fresh output laid out like x, that output as a
    1-D view in the same order): an elementwise kernel keeps a channels-last input (oneDNN's outputs)
    channels-last, with no transposing copy either way. An x that is not one dense block of
    non-negative strides is copied to C order first."""
    flat = x.ravel(order="K")
    if x.size and (min(x.strides) < 0 or not np.shares_memory(flat, x)):
        x = np.ascontiguousarray(x)
        flat = x.reshape(-1)
    out = np.empty_like(x, dtype=dtype)
    return flat, out, out.ravel(order="K")


def _np_dtype(onnx_type: int, op: str) -> np.dtype:
    try:
        return np.dtype(tensor_dtype_to_np_dtype(int(onnx_type)))
    except Exception as e:  # noqa: BLE001
        raise KernelError(f"{op}: output_dtype {onnx_type} is not a known ONNX tensor type") from e


def _as_float(a: np.ndarray) -> np.ndarray:
    """Scales in exotic float types (bfloat16, float8e8m0) computed as float32."""
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.dtype.itemsize < 2 or a.dtype not in (np.float16, np.float32, np.float64):
        return a.astype(np.float32)
    return a


def _broadcast_param(v: np.ndarray, shape, axis: int, block_size: int, op: str, what: str) -> np.ndarray:
    """Reshape/expand a scale or zero point so it broadcasts against ``shape``."""
    v = np.asarray(v)
    if v.ndim == 0:
        return v
    if v.size == 1 and not block_size:
        return v.reshape(())
    r = len(shape)
    ax = axis + r if axis < 0 else axis
    if not 0 <= ax < max(r, 1):
        raise ShapeInferenceError(f"{op}: axis {axis} out of range for input of rank {r}")
    if not block_size:
        if v.ndim != 1 or v.size != shape[ax]:
            raise ShapeInferenceError(
                f"{op}: {what} of shape {v.shape} is neither a scalar nor a 1-D tensor of length "
                f"{shape[ax]} (input shape {tuple(shape)}, axis {axis}); for blocked quantization set block_size"
            )
        dims = [1] * r
        dims[ax] = v.size
        return v.reshape(dims)
    if block_size < 0:
        raise KernelError(f"{op}: block_size must be positive, got {block_size}")
    if v.ndim != r:
        raise ShapeInferenceError(f"{op}: blocked {what} must have the input's rank {r}, got shape {v.shape}")
    v = np.repeat(v, block_size, axis=ax)
    if v.shape[ax] < shape[ax]:
        raise ShapeInferenceError(f"{op}: {what} shape with block_size {block_size} does not cover input dim {shape[ax]}")
    if v.shape[ax] != shape[ax]:
        v = np.take(v, np.arange(shape[ax]), axis=ax)
    if tuple(v.shape) != tuple(shape):
        raise ShapeInferenceError(f"{op}: blocked {what} shape does not match input shape {tuple(shape)} outside axis {axis}")
    return v


# ----------------------------------------------------------------------------- QuantizeLinear
@register("QuantizeLinear", since=10)
def quantize_linear(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, precision=0, saturate=1):
    op = "QuantizeLinear"
    if y_zero_point is not None:
        out_dt = np.dtype(y_zero_point.dtype)
        if output_dtype and np.dtype(_np_dtype(output_dtype, op)) != out_dt:
            raise KernelError(f"{op}: output_dtype {output_dtype} differs from the zero point's type {out_dt}")
    elif output_dtype:
        out_dt = _np_dtype(output_dtype, op)
    else:
        out_dt = np.dtype(np.uint8)
    if (
        _HAVE_NUMBA
        and out_dt in _Q8
        and not precision
        and x.dtype == np.float32
        and np.asarray(y_scale).size == 1
        and np.asarray(y_scale).dtype == np.float32
        and (y_zero_point is None or np.asarray(y_zero_point).size == 1)
        and not block_size
    ):
        lo, hi = _INT_RANGES[out_dt]
        zp = np.float32(0 if y_zero_point is None else np.asarray(y_zero_point).reshape(-1)[0])
        xf, out, outf = _same_layout(x, out_dt)
        _quantize8_nb(xf, np.float32(np.asarray(y_scale).reshape(-1)[0]), zp, np.float32(lo), np.float32(hi), outf)
        return out
    scale = _broadcast_param(_as_float(y_scale), x.shape, axis, block_size, op, "y_scale")
    if precision:
        pdt = _np_dtype(precision, op)
        q = x.astype(pdt) / scale.astype(pdt)
    else:
        xs = x if x.dtype.kind == "f" and x.dtype in (np.float16, np.float32, np.float64) else x.astype(np.float32) if x.dtype.kind != "i" else x
        q = xs / scale
    if out_dt in _INT_RANGES:
        lo, hi = _INT_RANGES[out_dt]
        q = np.asarray(q)
        if q.dtype not in (np.float32, np.float64) or not q.flags.writeable or q is x:
            q = q.astype(np.float64 if q.dtype == np.float64 else np.float32)
        np.rint(q, out=q)
        if y_zero_point is not None:
            zp = _broadcast_param(y_zero_point, x.shape, axis, block_size, op, "y_zero_point")
            q = np.add(q, zp.astype(q.dtype), out=q if zp.ndim == 0 or zp.shape == q.shape else None)
        np.clip(q, lo, hi, out=q)
        if out_dt.kind in "iu" and out_dt.itemsize in (1, 2) and out_dt in (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16)):
            return q.astype(out_dt)
        return q.astype(np.int32).astype(out_dt)
    if out_dt in _FLOAT8:
        if saturate:
            fi = ml_dtypes.finfo(out_dt)
            q = np.clip(q, float(fi.min), float(fi.max))
        return np.asarray(q).astype(np.float32).astype(out_dt)
    if out_dt in _SMALL_FLOATS:
        if y_zero_point is not None:
            zp = _broadcast_param(y_zero_point, x.shape, axis, block_size, op, "y_zero_point")
            q = q + zp.astype(np.float32)
        return np.asarray(q).astype(np.float32).astype(out_dt)
    raise KernelError(f"{op}: {out_dt} is not a quantized output type")


# ----------------------------------------------------------------------------- DequantizeLinear
@register("DequantizeLinear", since=10)
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    op = "DequantizeLinear"
    xdt = np.dtype(x.dtype)
    if (
        _HAVE_NUMBA
        and xdt in _Q8
        and np.asarray(x_scale).size == 1
        and np.asarray(x_scale).dtype == np.float32
        and (not output_dtype or _np_dtype(output_dtype, op) == np.float32)
        and (x_zero_point is None or (np.asarray(x_zero_point).size == 1 and np.dtype(x_zero_point.dtype) == xdt))
        and not block_size
    ):
        zp = np.float32(0 if x_zero_point is None else np.asarray(x_zero_point).reshape(-1)[0])
        xf, out, outf = _same_layout(x, np.float32)
        _dequantize8_nb(xf, np.float32(np.asarray(x_scale).reshape(-1)[0]), zp, outf)
        return out
    dx = x.astype(np.float32)
    if x_zero_point is not None and xdt not in _FLOAT8 and xdt not in _SMALL_FLOATS:
        if np.dtype(x_zero_point.dtype) != xdt:
            raise KernelError(f"{op}: x ({xdt}) and x_zero_point ({x_zero_point.dtype}) must have the same type")
        zp = _broadcast_param(x_zero_point, x.shape, axis, block_size, op, "x_zero_point")
        dx -= zp.astype(np.float32)
    scale = _broadcast_param(x_scale, x.shape, axis, block_size, op, "x_scale")
    out_dt = _np_dtype(output_dtype, op) if output_dtype else np.dtype(x_scale.dtype)
    if out_dt in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        y = dx * _as_float(scale).astype(np.float32)
    else:
        y = dx * _as_float(scale)
    return y.astype(out_dt, copy=False)


# ----------------------------------------------------------------------------- DynamicQuantizeLinear
@register("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(x):
    xf = x.astype(np.float32, copy=False)
    maxx = np.float32(max(0.0, float(xf.max()))) if xf.size else np.float32(0)
    minx = np.float32(min(0.0, float(xf.min()))) if xf.size else np.float32(0)
    scale = np.float32(1.0 if maxx == minx else (maxx - minx)) / np.float32(255)
    zp = np.rint(np.clip(np.float32(0) - minx / scale, 0, 255))
    q = np.rint(xf / scale)
    q += zp
    np.clip(q, 0, 255, out=q)
    return q.astype(np.uint8), np.asarray(scale, dtype=x.dtype), np.asarray(zp).astype(np.uint8)


# ----------------------------------------------------------------------------- QLinearMatMul
def _rows_param(v, ndim_a):
    v = np.asarray(v)
    if v.size <= 1:
        return v.reshape(())
    return v.reshape(v.shape + (1,)) if v.ndim == 1 else v


@register("QLinearMatMul", since=10)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    af = a.astype(np.float64)
    if a_zero_point is not None:
        af -= _rows_param(a_zero_point, a.ndim).astype(np.float64)
    bf = b.astype(np.float64)
    if b_zero_point is not None:
        bf -= np.asarray(b_zero_point).astype(np.float64)
    acc = np.matmul(af, bf)  # exact: integer products summed in float64
    a_s = _rows_param(_as_float(a_scale), a.ndim)
    scale = (a_s * _as_float(b_scale) / _as_float(y_scale)).astype(np.float64)
    acc *= scale
    out_dt = np.dtype(y_zero_point.dtype) if y_zero_point is not None else np.dtype(a.dtype)
    acc = np.rint(acc)
    if y_zero_point is not None:
        acc += np.asarray(y_zero_point).astype(np.float64)
    info = np.iinfo(out_dt)
    return np.clip(acc, info.min, info.max).astype(out_dt)

