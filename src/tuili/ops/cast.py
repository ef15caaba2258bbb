"""Cast, CastLike and BitCast, including the exotic ONNX types (ml_dtypes on the numpy side).

Rules implemented (ONNX Cast spec):
* float -> float8 (e4m3fn, e4m3fnuz, e5m2, e5m2fnuz): round to nearest even; with ``saturate=1``
  (default) out-of-range values and +-inf become +-max, with ``saturate=0`` they become NaN
  (or +-inf for e5m2).
* float -> float8e8m0: by exponent arithmetic with ``round_mode`` up / down / nearest; saturating
  keeps the exponent at 254 (E8M0 max) instead of overflowing into NaN.
* float -> int4 / uint4 / int2 / uint2: truncate toward zero, then keep the low bits (two's
  complement wrap), like every other float -> fixed-point / fixed-point -> fixed-point cast.
* float4e2m1 / float6: round to nearest even, saturating (these types have no inf / NaN).
* strings: numbers print as onnxruntime prints them (floats as "%.8g", "INF" / "-INF" / "NaN",
  bools as "1" / "0"); strings parse "INF", "+INF", "-INF", "NaN"
  case-insensitively and plain or scientific notation.
"""
from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

from tuili.errors import KernelError
from tuili.ops.elementwise import is_exotic
from tuili.ops.registry import register

_asarray = np.asarray

# ONNX TensorProto.DataType -> numpy dtype
_ONNX_TO_NP: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    8: np.dtype(object),
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
    14: np.dtype(np.complex64),
    15: np.dtype(np.complex128),
    16: np.dtype(ml_dtypes.bfloat16),
    17: np.dtype(ml_dtypes.float8_e4m3fn),
    18: np.dtype(ml_dtypes.float8_e4m3fnuz),
    19: np.dtype(ml_dtypes.float8_e5m2),
    20: np.dtype(ml_dtypes.float8_e5m2fnuz),
    21: np.dtype(ml_dtypes.uint4),
    22: np.dtype(ml_dtypes.int4),
    23: np.dtype(ml_dtypes.float4_e2m1fn),
    24: np.dtype(ml_dtypes.float8_e8m0fnu),
    25: np.dtype(ml_dtypes.uint2),
    26: np.dtype(ml_dtypes.int2),
    27: np.dtype(ml_dtypes.float6_e2m3fn),
    28: np.dtype(ml_dtypes.float6_e3m2fn),
}

_FLOAT8 = {
    np.dtype(ml_dtypes.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e4m3fnuz),
    np.dtype(ml_dtypes.float8_e5m2),
    np.dtype(ml_dtypes.float8_e5m2fnuz),
}
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
# sub-byte integers: (bits, signed)
_SMALL_INTS = {
    np.dtype(ml_dtypes.int4): (4, True),
    np.dtype(ml_dtypes.uint4): (4, False),
    np.dtype(ml_dtypes.int2): (2, True),
    np.dtype(ml_dtypes.uint2): (2, False),
}
_STR = np.dtype(object)


def onnx_to_numpy_dtype(to: int) -> np.dtype:
    try:
        return _ONNX_TO_NP[int(to)]
    except KeyError:
        raise KernelError(
            f"Cast: unsupported target type {to} (TensorProto.DataType); supported: {sorted(_ONNX_TO_NP)}"
        ) from None


def _is_float_like(dt: np.dtype) -> bool:
    return dt.kind == "f" or (is_exotic(dt) and dt not in _SMALL_INTS)


@functools.cache
def _f8_max(dt: np.dtype) -> float:
    return float(ml_dtypes.finfo(dt).max)


def _to_e8m0(x: np.ndarray, saturate: int, round_mode: str) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.uint16)
    mant = bits & 0x7FFFFF
    special = exp == 0xFF
    is_inf = special & (mant == 0)
    if round_mode == "up":
        up = mant != 0
    elif round_mode == "down":
        up = np.zeros(exp.shape, bool)
    elif round_mode == "nearest":
        up = (mant > 0x400000) | ((mant == 0x400000) & (exp > 0))
    else:
        raise KernelError(f"Cast: round_mode must be 'up', 'down' or 'nearest', got {round_mode!r}")
    up &= ~special
    if saturate:
        up &= exp != 0xFE
    out = exp + up.astype(np.uint16)
    out = np.minimum(out, 0xFF).astype(np.uint8)
    if saturate:
        out[is_inf] = 0xFE
    return out.view(_E8M0)


def _wrap_small_int(v: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    mask = (1 << bits) - 1
    w = v.astype(np.int64) & mask
    if signed:
        half = 1 << (bits - 1)
        w = np.where(w >= half, w - (1 << bits), w)
    return w


def _parse_strings(x: np.ndarray) -> np.ndarray:
    flat = [float(str(s).strip()) for s in x.reshape(-1)]
    return np.array(flat, dtype=np.float64).reshape(x.shape)


def _format_one(v) -> str:
    if isinstance(v, (np.floating, float)):
        if v != v:
            return "NaN"
        if v in (np.inf, -np.inf):
            return "INF" if v > 0 else "-INF"
        return f"{float(v):.8g}"  # onnxruntime prints every float type with 8 significant digits
    if isinstance(v, (np.bool_, bool)):
        return "1" if v else "0"
    return str(v)


def _format_strings(x: np.ndarray) -> np.ndarray:
    """Numbers -> strings the way onnxruntime prints them: '1', '0.1', '1.2345679e+08', 'INF', 'NaN'."""
    if is_exotic(x.dtype):
        x = x.astype(np.float32)
    out = np.empty(x.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(x.reshape(-1)):
        flat[i] = _format_one(v)
    return out


def cast_array(x, dst: np.dtype, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """Cast ``x`` to ``dst`` following ONNX Cast semantics (see module docstring)."""
    x = _asarray(x)
    src = x.dtype
    if src == dst:
        return x.copy()
    if dst == _STR:
        return _format_strings(x)
    if src == _STR:
        if dst.kind in "iu" and dst not in _SMALL_INTS:
            try:
                return np.array([int(str(s).strip()) for s in x.reshape(-1)], dtype=dst).reshape(x.shape)
            except ValueError:
                pass
        x = _parse_strings(x)
        src = x.dtype
        if dst == src:
            return x
    # exotic sources: widen to float32 (exact) or int8 first
    if src in _SMALL_INTS:
        x = x.astype(np.int8)
        src = x.dtype
    elif is_exotic(src):
        x = x.astype(np.float32)
        src = x.dtype
        if dst == src:
            return x
    if dst == np.bool_:
        return _asarray(x != 0)
    if dst in _FLOAT8:
        xf = x if src.kind == "f" else x.astype(np.float32)
        if saturate:
            m = _f8_max(dst)
            xf = np.clip(xf, -m, m)  # NaN stays NaN
        return xf.astype(dst)
    if dst == _E8M0:
        return _to_e8m0(x, saturate, round_mode)
    if dst in _SMALL_INTS:
        bits, signed = _SMALL_INTS[dst]
        if src.kind == "f":
            x = np.trunc(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
        return _wrap_small_int(x, bits, signed).astype(dst)
    if is_exotic(dst):  # bfloat16, float4, float6: ml_dtypes rounds to nearest even
        if src.kind not in "f":
            x = x.astype(np.float32 if x.dtype.itemsize <= 2 else np.float64)
        return x.astype(dst)
    return x.astype(dst)


@register("Cast", since=1)
def cast(x, *, to, saturate=1, round_mode="up"):
    if isinstance(to, str):  # opset 1 used a type name string
        import onnx

        to = onnx.TensorProto.DataType.Value(to.upper())
    return cast_array(x, onnx_to_numpy_dtype(to), saturate, round_mode)


@register("CastLike", since=15)
def cast_like(x, target_type, *, saturate=1, round_mode="up"):
    return cast_array(x, _asarray(target_type).dtype, saturate, round_mode)


@register("BitCast", since=26)
def bitcast(x, *, to):
    x = _asarray(x)
    dst = onnx_to_numpy_dtype(to)
    if dst == _STR or x.dtype == _STR:
        raise KernelError("BitCast: string tensors cannot be bit-cast; use Cast")
    src_bits = _bit_width(x.dtype)
    dst_bits = _bit_width(dst)
    if src_bits != dst_bits:
        raise KernelError(
            f"BitCast: input type {x.dtype} has {src_bits} bits but target {dst} has {dst_bits}; "
            "BitCast needs equal bit widths"
        )
    return np.array(x, order="C", copy=True).view(dst)


def _bit_width(dt: np.dtype) -> int:
    if dt in _SMALL_INTS:
        return _SMALL_INTS[dt][0]
    if dt == np.dtype(ml_dtypes.float4_e2m1fn):
        return 4
    return dt.itemsize * 8
