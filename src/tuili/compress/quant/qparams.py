"""Quantization parameters: integer types, ranges -> (scale, zero point), and the numpy reference
of ONNX's QuantizeLinear / DequantizeLinear that every other module checks itself against.

An affine quantizer maps a real range [lo, hi] (always widened to contain 0, so that 0 is exact:
zero padding and ReLU's floor stay exact) onto the integers [qmin, qmax]:
    scale = (hi - lo) / (qmax - qmin),  zero_point = round(qmin - lo / scale)
Symmetric quantization centres the range: [-a, a] with a = max(|lo|, |hi|), zero point 0 (int8) or
128 (uint8). ``reduce_range`` keeps 7 bits of magnitude (int8 in [-64, 64]): onnxruntime's u8s8
kernels on CPUs without VNNI add pairs of u8*s8 products into a saturating int16, and
2 * 255 * 64 = 32640 still fits (README, "Every CPU").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from tuili.errors import ConfigError


@dataclass(frozen=True)
class QType:
    """An integer type as a quantizer sees it: its numpy dtype and the integer range used."""

    name: str  # "int8" | "uint8"
    qmin: int
    qmax: int

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(self.name)

    @property
    def onnx(self) -> int:
        return onnx.helper.np_dtype_to_tensor_dtype(self.numpy)

    @property
    def signed(self) -> bool:
        return self.qmin < 0


def qtype(name: str, *, symmetric: bool = False, reduce_range: bool = False) -> QType:
    """The integer range for ``name`` ("int8" / "uint8"). Symmetric int8 drops -128 so the range is
    centred ([-127, 127]); ``reduce_range`` keeps 7 bits of magnitude."""
    if name == "int8":
        if reduce_range:
            return QType("int8", -64, 64)
        return QType("int8", -127 if symmetric else -128, 127)
    if name == "uint8":
        return QType("uint8", 0, 127 if reduce_range else 255)
    raise ConfigError(f"quantized type {name!r} is not supported; use 'int8' or 'uint8'")


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
    info = np.iinfo(zp.dtype)
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
