"""Block-wise 4-bit weights: scales and zero points per block of ``block_size`` rows along K, codes,
nibble packing, and the numpy reference of what a blocked int4 DequantizeLinear or MatMulNBits computes.

A weight ``w`` of shape [K, N] (MatMul's layout: K inputs, N outputs) is cut along K into blocks of
``block_size`` rows; each (block, output column) gets its own scale (and zero point):
  symmetric   scale = max|w| / 7, codes q + 8 with q = clip(round(w / scale), -8, 7)   (zero point 8)
  asymmetric  [lo, hi] widened to contain 0, scale = (hi - lo) / 15, zero point round(-lo / scale)
Codes are kept unsigned (0..15) in one [K_padded, N] uint8 array whatever the format; a K that the
block size does not divide is padded with zero rows to whole blocks (padding quantizes to the zero
point exactly and is sliced off again: DequantizeLinear's last block is partial, MatMulNBits takes K).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuili.errors import ConfigError

QMAX = 15  # unsigned 4-bit codes 0..15
SYMMETRIC_ZERO = 8  # the zero point of symmetric codes (signed int4 q = code - 8)


def check_block_size(block_size: int) -> int:
    """MatMulNBits takes powers of two from 16 up; the same rule keeps both formats interchangeable."""
    b = int(block_size)
    if b < 16 or b & (b - 1):
        raise ConfigError(f"int4 block size {block_size}: use a power of two >= 16 (32 or 128 are usual)")
    return b


def blocks_of(k: int, block_size: int) -> int:
    return -(-k // block_size)


@dataclass
class BlockWeights:
    """A [K, N] weight as 4-bit codes per block of ``block_size`` rows."""

    codes: np.ndarray  # [K_padded, N] uint8 in 0..15
    scale: np.ndarray  # [blocks, N] float32
    zero_point: np.ndarray | None  # [blocks, N] uint8 in 0..15; None: symmetric (8)
    k: int  # K before padding
    block_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def n(self) -> int:
        return self.codes.shape[1]

    def zero_points(self) -> np.ndarray:
        if self.zero_point is None:
            return np.full(self.scale.shape, SYMMETRIC_ZERO, np.uint8)
        return self.zero_point

    def dequantize(self) -> np.ndarray:
        """The [K, N] float32 weight these codes stand for."""
        s = np.repeat(self.scale, self.block_size, axis=0)
        z = np.repeat(self.zero_points().astype(np.float32), self.block_size, axis=0)
        return ((self.codes.astype(np.float32) - z) * s)[: self.k]

    def nbytes(self) -> int:
        """Bytes stored: packed codes, float32 scales, packed zero points."""
        zp = 0 if self.zero_point is None else self.scale.shape[1] * blocks_of(self.scale.shape[0], 2)
        return self.k * self.n // 2 + (self.k * self.n) % 2 + self.scale.nbytes + zp


def pad_rows(w: np.ndarray, block_size: int) -> np.ndarray:
    """``w`` [K, N] with zero rows appended up to whole blocks."""
    k = w.shape[0]
    kp = blocks_of(k, block_size) * block_size
    if kp == k:
        return w
    return np.concatenate([w, np.zeros((kp - k, *w.shape[1:]), w.dtype)])


def block_params(wp: np.ndarray, block_size: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(scale [blocks, N] float32, zero point [blocks, N] uint8 or None) of a padded [K_padded, N] weight."""
    b = wp.reshape(-1, block_size, wp.shape[-1]).astype(np.float64)
    if symmetric:
        scale = np.abs(b).max(axis=1) / (QMAX // 2)
        zp = None
    else:
        lo, hi = np.minimum(b.min(axis=1), 0.0), np.maximum(b.max(axis=1), 0.0)
        scale = (hi - lo) / QMAX
        zp = np.clip(np.rint(-lo / np.where(scale > 0, scale, 1.0)), 0, QMAX).astype(np.uint8)
    scale = np.maximum(np.where(scale > 0, scale, 1.0), np.finfo(np.float32).tiny).astype(np.float32)
    return scale, zp


def round_codes(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Codes of ``w`` (rows of one or more blocks, columns N) with per-column ``scale``/``zero_point``
    already repeated to its shape: clip(round_half_even(w / scale) + zero_point, 0, 15)."""
    return np.clip(np.rint(w / scale) + zero_point, 0, QMAX).astype(np.uint8)


def quantize_blocks(w: np.ndarray, block_size: int, symmetric: bool = True) -> BlockWeights:
    """Round-to-nearest 4-bit codes of ``w`` [K, N] per block of ``block_size`` rows."""
    if w.ndim != 2:
        raise ConfigError(f"int4 block quantization takes a 2-D [K, N] weight, got shape {w.shape}")
    block_size = check_block_size(block_size)
    wp = pad_rows(np.asarray(w, np.float32), block_size)
    scale, zp = block_params(wp, block_size, symmetric)
    z = SYMMETRIC_ZERO if zp is None else np.repeat(zp, block_size, axis=0).astype(np.float32)
    codes = round_codes(wp, np.repeat(scale, block_size, axis=0), z)
    return BlockWeights(codes, scale, zp, w.shape[0], block_size)


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis, the first in the low nibble (an odd length is
    padded with a zero code): ONNX's int4/uint4 and MatMulNBits' order."""
    c = np.asarray(codes, np.uint8)
    if c.shape[-1] % 2:
        c = np.concatenate([c, np.zeros((*c.shape[:-1], 1), np.uint8)], axis=-1)
    return (c[..., 0::2] & 0x0F) | ((c[..., 1::2] & 0x0F) << 4)


def unpack_int4(packed: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` codes along the last axis of :func:`pack_int4`'s output."""
    p = np.asarray(packed, np.uint8)
    out = np.empty((*p.shape[:-1], 2 * p.shape[-1]), np.uint8)
    out[..., 0::2] = p & 0x0F
    out[..., 1::2] = p >> 4
    return out[..., :n]


__all__ = ["BlockWeights", "block_params", "blocks_of", "check_block_size", "pack_int4", "pad_rows",
           "quantize_blocks", "round_codes", "unpack_int4"]
