"""Bit-packed binary convolution: ``tuili::BinaryConv`` (XNOR-Net / BNN inference).

``tuili::BinaryConv(X, W, alpha, B?)`` computes exactly what the standard-op form of a binarized
layer computes, ``Conv(Sign(X), alpha * Wb, B)`` with ``Wb`` in {-1, +1}:

    Y[n, o, y, x] = alpha[o] * sum_{c, ky, kx} Sign(X)[n, c, y*s + ky*d - p, x*s + kx*d - p] * Wb[o, c, ky, kx] + B[o]

* ``X``: float [N, C, H, W]. ``W``: uint64 [C_out, kh, kw, ceil(C / 64)], the signs of ``Wb`` packed
  along input channels (bit ``c % 64`` of word ``c // 64`` is 1 where the weight is -1; bits past
  ``C`` are 0), as :func:`pack_weights` writes them. ``alpha``: float [C_out] (XNOR-Net's mean |W|,
  BatchNorm scales folded in; may be negative). ``B``: optional float [C_out].
* Attributes: ``channels`` (C, which the packed words no longer tell), ``kernel_shape``, ``pads``,
  ``strides``, ``dilations`` (as Conv; ``group`` 1 only).

How it runs: X is binarized once into two bit planes packed along channels, ``neg`` (x < 0) and
``nz`` (x != 0). For a weight word ``w``, ``popcount(nz) - 2 * popcount((neg ^ w) & nz)`` is the
+-1 dot product over that word's channels. **Zeros are not +-1**: ONNX ``Sign(0) = 0`` and Conv's
padded positions are 0, so both must contribute 0. Input zeros are cleared out of ``nz`` (so they
count for nothing, exactly as in the float form); padded positions are never read: the kernel
skips taps that fall outside the image (no padded copy), and the per-position count of contributing
channels, ``sum popcount(nz)`` over the taps that fall inside, is computed once per output position
and shared by all output channels. Channel bits past ``C`` are 0 in ``nz``, so channel counts that
are not multiples of 64 need no special case. The integer dot products are exact (int32), so the
result equals the float form's ``Conv(Sign(X), Wb) * alpha`` bit for bit.

The inner loop runs over output columns of one row with the weight word fixed: a contiguous
XOR/AND/popcount stream that LLVM vectorizes (``llvm.ctpop`` on uint64 lanes).
"""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError
from tuili.ops._numba import HAVE_NUMBA
from tuili.ops.conv import conv_out_shape, resolve_pads
from tuili.ops.registry import register

DOMAIN = "tuili"
WORD_BITS = 64


def words_for(channels: int) -> int:
    """uint64 words holding one bit per channel."""
    return -(-int(channels) // WORD_BITS)


def _pack_bits(bits: np.ndarray, axis: int) -> np.ndarray:
    """Pack a bool array along ``axis`` into uint64 words (bit i of word k = element 64k + i), word axis last."""
    bits = np.moveaxis(np.asarray(bits, bool), axis, -1)
    n = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (words_for(n) * WORD_BITS,), np.uint8)
    padded[..., :n] = bits
    by = np.packbits(padded, axis=-1, bitorder="little")  # 8 bytes per word, little-endian bit order
    return by.view("<u8").astype(np.uint64, copy=False)


def pack_weights(w: np.ndarray) -> np.ndarray:
    """Signs of a [C_out, C, kh, kw] weight (negative -> bit 1; zero counts as +1) as the uint64
    [C_out, kh, kw, words] tensor ``tuili::BinaryConv`` takes."""
    w = np.asarray(w)
    if w.ndim != 4:
        raise KernelError(f"tuili::BinaryConv: pack_weights needs a [C_out, C, kh, kw] weight, got shape {w.shape}")
    return np.ascontiguousarray(_pack_bits(np.transpose(w < 0, (0, 2, 3, 1)), axis=-1))


def unpack_weights(packed: np.ndarray, channels: int) -> np.ndarray:
    """The +-1 float32 [C_out, C, kh, kw] weight ``packed`` holds (inverse of :func:`pack_weights`)."""
    by = np.ascontiguousarray(packed, np.uint64).astype("<u8").view(np.uint8)
    bits = np.unpackbits(by, axis=-1, bitorder="little")[..., :channels]
    return np.transpose(np.where(bits, np.float32(-1), np.float32(1)), (0, 3, 1, 2)).copy()


def pack_signs(x: np.ndarray, pads=(0, 0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """The two bit planes of Sign(x) for float [N, C, H, W] x: (neg, nz), each uint64
    [N, words, H + top + bottom, W + left + right] for ``pads`` = (top, left, bottom, right), the
    border all zero bits (nz = 0: padding contributes nothing)."""
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    pt, pl, pb, pr = (int(v) for v in pads)
    shape = (n, words_for(c), h + pt + pb, w + pl + pr)
    neg, nz = np.zeros(shape, np.uint64), np.zeros(shape, np.uint64)
    if HAVE_NUMBA and x.dtype in (np.float32, np.float64):
        from tuili.ops._binary_nb import _pack_signs_nb

        _pack_signs_nb(x, neg, nz, pt, pl)
    else:
        inner = (slice(None), slice(None), slice(pt, pt + h), slice(pl, pl + w))
        neg[inner] = np.moveaxis(_pack_bits(x < 0, 1), -1, 1)
        nz[inner] = np.moveaxis(_pack_bits(x != 0, 1), -1, 1)
    return neg, nz


def _binary_conv_np(neg, nz, w, out_sp, strides, dilations):
    """The same bit arithmetic in numpy (no numba): integer dot products [N, C_out, OH, OW] on padded planes."""
    cout, kh, kw, words = w.shape
    (oh, ow), (sh, sw), (dh, dw) = out_sp, strides, dilations
    dots = np.zeros((neg.shape[0], cout, oh, ow), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            win = (slice(ky * dh, ky * dh + (oh - 1) * sh + 1, sh), slice(kx * dw, kx * dw + (ow - 1) * sw + 1, sw))
            for c in range(words):
                xn, xz = neg[(slice(None), slice(c, c + 1)) + win], nz[(slice(None), slice(c, c + 1)) + win]
                wv = w[:, ky, kx, c][None, :, None, None]
                dots += np.bitwise_count(xz).astype(np.int64) - 2 * np.bitwise_count((xn ^ wv) & xz).astype(np.int64)
    return dots


def _ints(v, n: int, default: int) -> list[int]:
    return [default] * n if v is None or len(v) == 0 else [int(a) for a in v]


@register("BinaryConv", domain=DOMAIN, since=1)
def binary_conv(x, w, alpha, b=None, *, channels=0, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                pads=None, strides=None):
    op = "tuili::BinaryConv"
    if x.ndim != 4:
        raise KernelError(f"{op}: input X must be 4-D NCHW, got shape {x.shape}")
    if group != 1:
        raise KernelError(f"{op}: group={group} is not supported (binary convolution is dense, group 1)")
    n, c, h, wd = x.shape
    if channels != c or w.dtype != np.uint64 or w.ndim != 4 or w.shape[3] != words_for(c):
        raise KernelError(f"{op}: X has {c} channels but the packed weight is {w.dtype}{list(w.shape)} for channels="
                          f"{channels}; W must be uint64 [C_out, kh, kw, ceil(C/64)] from tuili.ops.binary.pack_weights")
    cout, kh, kw, _ = w.shape
    if kernel_shape is not None and len(kernel_shape) and list(kernel_shape) != [kh, kw]:
        raise KernelError(f"{op}: kernel_shape {list(kernel_shape)} does not match the packed weight's {kh}x{kw}")
    alpha = np.asarray(alpha, np.float32).reshape(-1)
    bias = np.zeros(cout, np.float32) if b is None else np.asarray(b, np.float32).reshape(-1)
    if alpha.size != cout or bias.size != cout:
        raise KernelError(f"{op}: alpha ({alpha.size}) and B ({bias.size}) need one value per output channel ({cout})")
    st, dl = _ints(strides, 2, 1), _ints(dilations, 2, 1)
    p = resolve_pads(op, (h, wd), (kh, kw), st, dl, pads, auto_pad)
    out_sp = conv_out_shape(op, (h, wd), (kh, kw), st, dl, p)
    neg, nz = pack_signs(x, (p[0], p[1], p[2], p[3]))
    if not HAVE_NUMBA:
        dots = _binary_conv_np(neg, nz, w, out_sp, st, dl).astype(np.float32)
        return (dots * alpha[:, None, None] + bias[:, None, None]).astype(np.float32)
    out = np.empty((n, cout) + tuple(out_sp), np.float32)
    _run_split(neg, nz, np.ascontiguousarray(w), alpha, bias, out, st, dl, p)
    return out if x.dtype == np.float32 else out.astype(x.dtype)


_POOL = None
THREADS = 2  # output channels are split across this many threads (the numba kernel releases the GIL)


def _run_split(neg, nz, w, alpha, bias, out, st, dl, p):
    global _POOL
    from tuili.ops._binary_nb import _binary_conv_nb

    cout = w.shape[0]
    args = (st[0], st[1], dl[0], dl[1])
    parts = min(THREADS, cout)
    if parts <= 1 or out[0, 0].size * cout * w[0].size < 1 << 16:  # too small to be worth a hand-off
        _binary_conv_nb(neg, nz, w, alpha, bias, out, 0, cout, *args)
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="tuili-binconv")
    bounds = [math.ceil(cout * k / parts) for k in range(parts + 1)]
    futures = [_POOL.submit(_binary_conv_nb, neg, nz, w, alpha, bias, out, bounds[k], bounds[k + 1], *args)
               for k in range(1, parts)]
    _binary_conv_nb(neg, nz, w, alpha, bias, out, bounds[0], bounds[1], *args)
    for f in futures:
        f.result()
