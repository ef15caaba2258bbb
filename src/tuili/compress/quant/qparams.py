"""Quantization parameters: integer types, ranges -> (scale, zero point), and the numpy reference
of ONNX's QuantizeLinear / DequantizeLinear that every other module checks itself against.

An affine quantizer maps a real range [lo, hi] (always widened to contain 0, so that 0 is exact:
zero padding and ReLU's floor stay exact) onto the integers [qmin, qmax]:
    scale = (hi - lo) / (qmax - qmin),  zero_point = round(qmin - lo / scale)
Symmetric quantization centres the range: [-a, a] with a = max(|lo|, |hi|), zero point 0 (int8) or
128 (uint8). ``reduce_range`` keeps 7 bits of magnitude (int8 in [-64, 64]): onnxruntime's u8s8
kernels on CPUs without VNNI add pairs of u8*s8 products into a saturating int16, and
2 * 255 * 64 = 32640 still fits (README, "Every CPU").

Types: int8/uint8, and int4/uint4 (ONNX opset 21). ``bits`` narrows a type's range to fewer bits inside
the same storage (int8 storage of 4-bit weights in [-7, 7]: onnxruntime's int8 kernels still run them).
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from tuili import dtypes
from tuili.errors import ConfigError


@dataclass(frozen=True)
class QType:
    """An integer type as a quantizer sees it: its numpy dtype and the integer range used."""

    name: str  # "int8" | "uint8" | "int4" | "uint4": the storage type
    qmin: int
    qmax: int

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(dtypes.from_name(self.name).numpy)

    @property
    def onnx(self) -> int:
        return dtypes.from_name(self.name).onnx

    @property
    def storage_bits(self) -> int:
        return dtypes.from_name(self.name).bits

    @property
    def signed(self) -> bool:
        return self.qmin < 0


STORAGE_BITS = {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4}


def qtype(name: str, *, symmetric: bool = False, reduce_range: bool = False, bits: int | None = None) -> QType:
    """The integer range for ``name`` ("int8" / "uint8" / "int4" / "uint4"). Symmetric signed types drop
    the most negative value so the range is centred ([-127, 127]); ``reduce_range`` keeps 7 bits of
    magnitude of an 8-bit type. ``bits`` (2..storage bits) narrows the range inside the same storage;
    below 8 bits ``reduce_range`` has nothing left to do (2 * 255 * 63 fits int16)."""
    if name not in STORAGE_BITS:
        raise ConfigError(f"quantized type {name!r} is not supported; use one of {', '.join(STORAGE_BITS)}")
    width = STORAGE_BITS[name]
    b = width if bits is None else int(bits)
    if not 2 <= b <= width:
        raise ConfigError(f"{b} bits do not fit quantized type {name!r}: use 2..{width} bits")
    if name.startswith("u"):
        return QType(name, 0, 127 if reduce_range and b == 8 else 2**b - 1)
    if reduce_range and b == 8:
        return QType(name, -64, 64)
    half = 2 ** (b - 1)
    return QType(name, -(half - 1) if symmetric else -half, half - 1)


def scale_zero_point(lo, hi, qt: QType, *, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point of ``qt``) for ranges ``lo``..``hi`` (scalars or per-channel arrays).

    The range is widened to contain 0; an empty range (all zeros) gets scale 1 so that nothing
    divides by zero (any scale represents zeros exactly)."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if symmetric:
        a = np.maximum(-lo, hi)
        half = (qt.qmax - qt.qmin) / 2.0
        scale = a / half
        zp = np.full(np.shape(scale), (qt.qmin + qt.qmax + 1) // 2 if not qt.signed else 0, np.float64)
    else:
        scale = (hi - lo) / (qt.qmax - qt.qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(qt.qmin - lo / safe), qt.qmin, qt.qmax)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    # float32 can round a tiny scale to 0; keep it representable and positive
    scale = np.maximum(scale, np.finfo(np.float32).tiny)
    return scale, zp.astype(qt.numpy)


def _broadcast(p: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or np.ndim(p) == 0:
        return p
    shape = [1] * ndim
    shape[axis] = -1
    return np.reshape(p, shape)


def quantize(x: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), per tensor or along ``axis``."""
    zp = np.asarray(zero_point)
    info = ml_dtypes.iinfo(zp.dtype)
    s = _broadcast(np.asarray(scale, np.float32), x.ndim, axis)
    z = _broadcast(zp.astype(np.int32), x.ndim, axis)
    q = np.rint(np.asarray(x, np.float32) / s) + z
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def dequantize(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale, per tensor or along ``axis``."""
    s = _broadcast(np.asarray(scale, np.float32), q.ndim, axis)
    z = _broadcast(np.asarray(zero_point).astype(np.int32), q.ndim, axis)
    return ((q.astype(np.int32) - z) * s).astype(np.float32)


def channel_minmax(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of ``w`` per slice along ``axis`` (per tensor when None)."""
    if axis is None:
        return np.asarray(w.min()), np.asarray(w.max())
    red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    return w.min(axis=red), w.max(axis=red)
