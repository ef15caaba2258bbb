"""numba kernels of tuili::BinaryConv (``ops.binary``), in their own module so that numba (and LLVM,
~56 MB) is imported only when a binary convolution first runs: the popcount intrinsic needs numba at
definition time, which ``ops._numba``'s lazy ``njit`` cannot defer."""
from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):  # pragma: no cover - compiled
    """llvm.ctpop on a uint64: one POPCNT, or vectorized in loops."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True)
def _pack_signs_nb(x, neg, nz, pt, pl):  # pragma: no cover - compiled
    """Bit planes of x into the (zeroed) padded planes, image at offset (pt, pl)."""
    n, c, h, w = x.shape
    words = neg.shape[1]
    for i in range(n):
        for k in range(words):
            for y in range(h):
                for xx in range(w):
                    a = np.uint64(0)
                    b = np.uint64(0)
                    for bit in range(min(64, c - 64 * k)):
                        v = x[i, 64 * k + bit, y, xx]
                        a |= np.uint64(v < 0) << np.uint64(bit)
                        b |= np.uint64(v != 0) << np.uint64(bit)
                    neg[i, k, y + pt, xx + pl] = a
                    nz[i, k, y + pt, xx + pl] = b


@numba.njit(cache=True, nogil=True)
def _binary_conv_nb(neg, nz, w, alpha, bias, out, o_lo, o_hi, sh, sw, dh, dw):  # pragma: no cover
    # Output (oy, ox) reads padded position (oy*sh + ky*dh, ox*sw + kx*dw): as a flat index into a
    # padded plane of row length wp that is j(oy, ox) + ky*dh*wp + kx*dw with j = oy*sh*wp + ox*sw. With
    # unit strides j runs over one contiguous span (the columns past ow of each row are computed and
    # dropped), so every (tap, word) is one long vectorizable loop.
    n, words, hp, wp = neg.shape
    _, kh, kw, _ = w.shape
    oh, ow = out.shape[2], out.shape[3]
    span = (oh - 1) * sh * wp + (ow - 1) * sw + 1
    negf = neg.reshape(n, words, hp * wp)
    nzf = nz.reshape(n, words, hp * wp)
    cnt = np.zeros(span, np.int32)
    acc = np.zeros(span, np.int32)
    for i in range(n):
        cnt[:] = 0  # contributing channels per output position (nz is 0 on padding), shared by every o
        for ky in range(kh):
            for kx in range(kw):
                base = ky * dh * wp + kx * dw
                for c in range(words):
                    xz = nzf[i, c, base:base + span]
                    for j in range(0, span, sw):
                        cnt[j] += np.int32(_popcount(xz[j]))
        for o in range(o_lo, o_hi):
            acc[:] = 0
            for ky in range(kh):
                for kx in range(kw):
                    base = ky * dh * wp + kx * dw
                    for c in range(words):
                        wv = w[o, ky, kx, c]
                        xn = negf[i, c, base:base + span]
                        xz = nzf[i, c, base:base + span]
                        if sw == 1:
                            for j in range(span):
                                acc[j] += np.int32(_popcount((xn[j] ^ wv) & xz[j]))
                        else:
                            for j in range(0, span, sw):
                                acc[j] += np.int32(_popcount((xn[j] ^ wv) & xz[j]))
            a = alpha[o]
            b = bias[o]
            for oy in range(oh):
                for ox in range(ow):
                    j = oy * sh * wp + ox * sw
                    out[i, o, oy, ox] = a * np.float32(cnt[j] - 2 * acc[j]) + b
