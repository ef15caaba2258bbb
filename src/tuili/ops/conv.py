"""Convolution kernels: Conv, ConvTranspose, ConvInteger, QLinearConv, DeformConv, CausalConvWithState.

Strategy (NCHW, any number of spatial dims):

* 1x1 kernels with unit stride and no padding are a plain (batched) matmul.
* depthwise (group == C_in == C_out) never loops over channels in Python: numba
  kernels for 2-D float32/float64 (3x3 and 5x5 specialised with unrolled taps,
  stride 2 via contiguous stride-1 rows; a generic tap loop otherwise), vectorized
  numpy multiply-adds over the taps for other ranks/dtypes.
* 2-D float32 convolutions with constant weights run on oneDNN through torch (``ops._torch``)
  where it is available: the planner calls ``prepare_conv`` once, which packs the weight in
  oneDNN's layout; the run itself passes zero-copy views.
* everything else is im2col on a zero-padded copy (a strided window view
  materialized once into a scratch buffer, reused across runs) followed by one matmul per
  group (batched over groups).

float32 stays float32; float16/bfloat16 are computed in float32 and cast back.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from tuili.errors import KernelError, ShapeInferenceError
from tuili.ops._numba import HAVE_NUMBA as _HAVE_NUMBA
from tuili.ops._numba import numba
from tuili.ops.registry import NodeInfo, absorbing, prepares, register, scratch, unplanned

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- shape helpers
def _ints(v, n: int, default: int) -> list[int]:
    if v is None or len(v) == 0:
        return [default] * n
    return [int(a) for a in v]


def resolve_pads(
    op: str,
    in_shape,
    kernel,
    strides,
    dilations,
    pads,
    auto_pad: str,
) -> list[int]:
    """Explicit [begin..., end...] pads for Conv/pool-style windows (auto_pad resolved)."""
    nd = len(in_shape)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(nd):
            o = -(-in_shape[i] // strides[i])
            ek = (kernel[i] - 1) * dilations[i] + 1
            total = max(0, (o - 1) * strides[i] + ek - in_shape[i])
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return [p[0] for p in out] + [p[1] for p in out]
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    if auto_pad not in ("NOTSET", "", None):
        raise KernelError(f"{op}: unknown auto_pad {auto_pad!r}; use NOTSET, SAME_UPPER, SAME_LOWER or VALID")
    p = _ints(pads, 2 * nd, 0)
    if len(p) != 2 * nd:
        raise ShapeInferenceError(f"{op}: pads has {len(p)} values, expected {2 * nd} for input spatial shape {tuple(in_shape)}")
    return p


def conv_out_shape(op, in_shape, kernel, strides, dilations, pads) -> list[int]:
    nd = len(in_shape)
    out = []
    for i in range(nd):
        ek = (kernel[i] - 1) * dilations[i] + 1
        o = (in_shape[i] + pads[i] + pads[nd + i] - ek) // strides[i] + 1
        if o <= 0:
            raise ShapeInferenceError(
                f"{op}: spatial dim {i} of size {in_shape[i]} (pads {pads[i]},{pads[nd + i]}) is smaller than "
                f"the dilated kernel {ek}; check kernel_shape/pads/dilations"
            )
        out.append(o)
    return out


def pad_spatial(x: np.ndarray, pads, value=0, temporary: bool = False) -> np.ndarray:
    """Copy of x (N, C, *S) padded on the spatial dims with ``value`` (negative pads crop).

    ``temporary=True`` writes into a scratch buffer (``registry.scratch()``): only for temporaries.
    """
    nd = x.ndim - 2
    if not any(pads):
        return x
    begin, end = pads[:nd], pads[nd:]
    crop = tuple(slice(max(0, -b), x.shape[2 + i] - max(0, -e)) for i, (b, e) in enumerate(zip(begin, end)))
    x = x[(slice(None), slice(None)) + crop]
    begin = [max(0, b) for b in begin]
    end = [max(0, e) for e in end]
    shape = x.shape[:2] + tuple(s + b + e for s, b, e in zip(x.shape[2:], begin, end))
    if temporary:
        out, fresh = scratch().buffer(("pad", tuple(begin), tuple(end), float(value)), shape, x.dtype)
    else:
        out, fresh = np.empty(shape, dtype=x.dtype), True
    # write the border slabs (once per reused buffer) and the interior: no full zero fill first
    for i in range(nd if fresh else 0):
        lo = [slice(None)] * (nd + 2)
        hi = [slice(None)] * (nd + 2)
        lo[2 + i] = slice(0, begin[i])
        hi[2 + i] = slice(begin[i] + x.shape[2 + i], shape[2 + i])
        out[tuple(lo)] = value
        out[tuple(hi)] = value
    out[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(begin, x.shape[2:]))] = x
    return out


def _window_view(xp: np.ndarray, kernel, strides, dilations, out_sp) -> np.ndarray:
    """View of shape (N, C, *kernel, *out) over a padded input."""
    nd = len(kernel)
    st = xp.strides
    shape = xp.shape[:2] + tuple(kernel) + tuple(out_sp)
    strides_ = st[:2] + tuple(st[2 + i] * dilations[i] for i in range(nd)) + tuple(st[2 + i] * strides[i] for i in range(nd))
    return np.lib.stride_tricks.as_strided(xp, shape=shape, strides=strides_, writeable=False)


def _tap_slices(kidx, strides, dilations, out_sp):
    return tuple(
        slice(k * d, k * d + (o - 1) * s + 1, s) for k, s, d, o in zip(kidx, strides, dilations, out_sp)
    )


def _compute_dtype(dt: np.dtype) -> np.dtype:
    if dt == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


# ----------------------------------------------------------------------------- depthwise
if _HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
    def _dw2d_nb(xp, w, out, sh, sw, dh, dw):  # pragma: no cover - compiled
        n_, c_, oh_, ow_ = out.shape
        kh, kw = w.shape[1], w.shape[2]
        acc = np.empty(ow_, dtype=out.dtype)
        for n in range(n_):
            for c in range(c_):
                for i in range(oh_):
                    acc[:] = 0.0
                    for a in range(kh):
                        xr = xp[n, c, i * sh + a * dh]
                        for b in range(kw):
                            wv = w[c, a, b]
                            off = b * dw
                            if sw == 1:
                                xs = xr[off:off + ow_]
                                for j in range(ow_):
                                    acc[j] += wv * xs[j]
                            else:
                                for j in range(ow_):
                                    acc[j] += wv * xr[j * sw + off]
                    orow = out[n, c, i]
                    for j in range(ow_):
                        orow[j] = acc[j]
        return out

    @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
    def _dw_flat_s1_nb(xp, w, out, dh, dw):  # pragma: no cover - compiled
        # stride 1: every tap is one long contiguous multiply-add over the flattened padded
        # plane (rows of width Wp); the columns past each output row are discarded.
        n_, c_, oh_, ow_ = out.shape
        hp, wp = xp.shape[2], xp.shape[3]
        kh, kw = w.shape[1], w.shape[2]
        length = (oh_ - 1) * wp + ow_
        acc = np.empty(length, dtype=out.dtype)
        for n in range(n_):
            for c in range(c_):
                plane = xp[n, c].reshape(hp * wp)
                acc[:] = 0.0
                for a in range(kh):
                    for b in range(kw):
                        wv = w[c, a, b]
                        xs = plane[a * dh * wp + b * dw:a * dh * wp + b * dw + length]
                        for p in range(length):
                            acc[p] += wv * xs[p]
                for i in range(oh_):
                    orow = out[n, c, i]
                    base = i * wp
                    for j in range(ow_):
                        orow[j] = acc[base + j]
        return out

    @numba.njit(cache=True, nogil=True, inline="always")
    def _taps5(w, c, a):  # pragma: no cover - compiled
        """The five weights of row a of channel c's 5x5 depthwise kernel."""
        return w[c, a, 0], w[c, a, 1], w[c, a, 2], w[c, a, 3], w[c, a, 4]

    @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
    def _dw5x5_nb(xp, w, out, sh):  # pragma: no cover - compiled
        # 5x5, column stride 1: one fused 5-tap multiply-add per kernel row
        n_, c_, oh_, ow_ = out.shape
        for n in range(n_):
            for c in range(c_):
                plane = xp[n, c]
                for i in range(oh_):
                    orow = out[n, c, i]
                    for j in range(ow_):
                        orow[j] = 0.0
                    for a in range(5):
                        r = plane[i * sh + a]
                        w0, w1, w2, w3, w4 = _taps5(w, c, a)
                        for j in range(ow_):
                            orow[j] += w0 * r[j] + w1 * r[j + 1] + w2 * r[j + 2] + w3 * r[j + 3] + w4 * r[j + 4]
        return out

    @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
    def _dw5x5_s2_nb(xe, xo, w, out, sh):  # pragma: no cover - compiled
        # 5x5, column stride 2 on de-interleaved even/odd columns: contiguous loads only
        n_, c_, oh_, ow_ = out.shape
        for n in range(n_):
            for c in range(c_):
                for i in range(oh_):
                    orow = out[n, c, i]
                    for j in range(ow_):
                        orow[j] = 0.0
                    for a in range(5):
                        e = xe[n, c, i * sh + a]
                        o = xo[n, c, i * sh + a]
                        w0, w1, w2, w3, w4 = _taps5(w, c, a)
                        for j in range(ow_):
                            orow[j] += w0 * e[j] + w1 * o[j] + w2 * e[j + 1] + w3 * o[j + 1] + w4 * e[j + 2]
        return out

    @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
    def _dw3x3_nb(xp, w, out, sh, sw):  # pragma: no cover - compiled
        n_, c_, oh_, ow_ = out.shape
        # column stride 2: computing the stride-1 row (contiguous, vectorizes) and keeping every
        # other value beats a strided gather
        full = (ow_ - 1) * sw + 1
        tmp = np.empty(full, dtype=out.dtype)
        for n in range(n_):
            for c in range(c_):
                plane = xp[n, c]
                w0 = w[c, 0, 0]
                w1 = w[c, 0, 1]
                w2 = w[c, 0, 2]
                w3 = w[c, 1, 0]
                w4 = w[c, 1, 1]
                w5 = w[c, 1, 2]
                w6 = w[c, 2, 0]
                w7 = w[c, 2, 1]
                w8 = w[c, 2, 2]
                for i in range(oh_):
                    r0 = plane[i * sh]
                    r1 = plane[i * sh + 1]
                    r2 = plane[i * sh + 2]
                    orow = out[n, c, i]
                    if sw == 1:
                        for j in range(ow_):
                            orow[j] = (w0 * r0[j] + w1 * r0[j + 1] + w2 * r0[j + 2]
                                       + w3 * r1[j] + w4 * r1[j + 1] + w5 * r1[j + 2]
                                       + w6 * r2[j] + w7 * r2[j + 1] + w8 * r2[j + 2])
                    elif sw == 2:
                        for j in range(full):
                            tmp[j] = (w0 * r0[j] + w1 * r0[j + 1] + w2 * r0[j + 2]
                                      + w3 * r1[j] + w4 * r1[j + 1] + w5 * r1[j + 2]
                                      + w6 * r2[j] + w7 * r2[j + 1] + w8 * r2[j + 2])
                        for j in range(ow_):
                            orow[j] = tmp[2 * j]
                    else:
                        for j in range(ow_):
                            q = j * sw
                            orow[j] = (w0 * r0[q] + w1 * r0[q + 1] + w2 * r0[q + 2]
                                       + w3 * r1[q] + w4 * r1[q + 1] + w5 * r1[q + 2]
                                       + w6 * r2[q] + w7 * r2[q + 1] + w8 * r2[q + 2])
        return out


def _depthwise(x: np.ndarray, w: np.ndarray, strides, dilations, pads, out_sp) -> np.ndarray:
    """x: unpadded (N, C, *S); w: (C, 1, *K). Returns (N, C, *out)."""
    n, c = x.shape[:2]
    kernel = w.shape[2:]
    if _HAVE_NUMBA and len(kernel) == 2 and x.dtype in (np.float32, np.float64):
        out = np.empty((n, c) + tuple(out_sp), dtype=x.dtype)
        wk = np.ascontiguousarray(w.reshape((c,) + tuple(kernel)), dtype=x.dtype)
        dil1 = dilations[0] == 1 and dilations[1] == 1
        xp = np.ascontiguousarray(pad_spatial(x, pads, temporary=True))
        if tuple(kernel) == (3, 3) and dil1:
            _dw3x3_nb(xp, wk, out, strides[0], strides[1])
        elif tuple(kernel) == (5, 5) and dil1 and strides[1] == 1:
            _dw5x5_nb(xp, wk, out, strides[0])
        elif tuple(kernel) == (5, 5) and dil1 and strides[1] == 2:
            xe = np.ascontiguousarray(xp[..., 0::2])
            xo = np.ascontiguousarray(xp[..., 1::2])
            _dw5x5_s2_nb(xe, xo, wk, out, strides[0])
        elif strides[0] == 1 and strides[1] == 1:
            _dw_flat_s1_nb(xp, wk, out, dilations[0], dilations[1])
        else:
            _dw2d_nb(xp, wk, out, strides[0], strides[1], dilations[0], dilations[1])
        return out
    xp = pad_spatial(x, pads)
    out = None
    tmp = None
    nd = len(kernel)
    for kidx in np.ndindex(*kernel):
        xs = xp[(slice(None), slice(None)) + _tap_slices(kidx, strides, dilations, out_sp)]
        wk = w[(slice(None), 0) + kidx].reshape((1, c) + (1,) * nd)
        if out is None:
            out = xs * wk
            tmp = np.empty_like(out)
        else:
            np.multiply(xs, wk, out=tmp)
            out += tmp
    return out


# ----------------------------------------------------------------------------- core conv
def conv_core(x: np.ndarray, w: np.ndarray, strides, dilations, pads, group: int, op: str = "Conv") -> np.ndarray:
    """Cross-correlation of x (N, C, *S) with w (M, C/group, *K); no bias. Same dtype as x."""
    n, c = x.shape[:2]
    m = w.shape[0]
    kernel = list(w.shape[2:])
    if c != w.shape[1] * group or m % group:
        raise ShapeInferenceError(
            f"{op}: input channels {c} / weight shape {w.shape} / group {group} are inconsistent "
            f"(need C == W.shape[1] * group and M % group == 0)"
        )
    out_sp = conv_out_shape(op, x.shape[2:], kernel, strides, dilations, pads)
    o_size = math.prod(out_sp)
    cg, mg = c // group, m // group

    # depthwise
    if group == c and m == c and group > 1 and all(p >= 0 for p in pads):
        return _depthwise(x, w, strides, dilations, pads, out_sp)

    # 1x1: no im2col
    if all(k == 1 for k in kernel):
        xs = pad_spatial(x, pads)
        if any(s != 1 for s in strides):
            xs = xs[(slice(None), slice(None)) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sp, strides))]
        if group == 1:
            w2 = w.reshape(m, c)
            if n == 1:
                y = w2 @ xs.reshape(c, o_size)
            else:
                y = np.matmul(w2, xs.reshape(n, c, o_size))
        else:
            y = np.matmul(w.reshape(group, mg, cg), xs.reshape(n, group, cg, o_size))
        return y.reshape((n, m) + tuple(out_sp))

    xp = pad_spatial(x, pads, temporary=True)
    view = _window_view(xp, kernel, strides, dilations, out_sp)  # (N, C, *K, *O)
    k_size = math.prod(kernel)
    colbuf, _ = scratch().buffer("im2col", view.shape, view.dtype)
    np.copyto(colbuf, view)  # im2col copy into a reused buffer
    cols = colbuf.reshape(n, group, cg * k_size, o_size)
    if group == 1:
        w2 = w.reshape(m, cg * k_size)
        y = w2 @ cols[0, 0] if n == 1 else np.matmul(w2, cols[:, 0])
    else:
        y = np.matmul(w.reshape(group, mg, cg * k_size), cols)
    return y.reshape((n, m) + tuple(out_sp))


def _conv_params(op, x, w, kernel_shape, strides, dilations, pads, auto_pad):
    nd = x.ndim - 2
    if nd < 1 or w.ndim != x.ndim:
        raise ShapeInferenceError(f"{op}: X has shape {x.shape} and W has shape {w.shape}; both need rank >= 3 and equal ranks")
    kernel = list(w.shape[2:])
    if kernel_shape and list(kernel_shape) != kernel:
        raise ShapeInferenceError(f"{op}: kernel_shape {list(kernel_shape)} does not match weight shape {w.shape}")
    strides = _ints(strides, nd, 1)
    dilations = _ints(dilations, nd, 1)
    pads = resolve_pads(op, x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    return kernel, strides, dilations, pads


def _add_bias(y: np.ndarray, b) -> np.ndarray:
    if b is not None:
        y += b.astype(y.dtype, copy=False).reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


@register("Conv", since=1)
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    kernel, strides, dilations, pads = _conv_params("Conv", x, w, kernel_shape, strides, dilations, pads, auto_pad)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt, copy=False)
    wc = w.astype(cdt, copy=False)
    y = conv_core(xc, wc, strides, dilations, pads, int(group))
    _add_bias(y, None if b is None else b.astype(cdt, copy=False))  # y is always a fresh array
    return y.astype(x.dtype, copy=False)


def packed_conv(info: NodeInfo, activation: str = "", activation_params=None, post=None, bf16: bool = False):
    """Plan time: Conv/FusedConv on a constant float32 4-D weight, packed for oneDNN (``ops._torch``;
    in bf16 with ``bf16``), or None to keep the numpy kernel (weight computed at run time, no oneDNN,
    pads it cannot take)."""
    from tuili.ops._torch import packed_conv2d

    w = info.consts[1]
    b_given = len(info.given) > 2 and info.given[2]
    b = info.consts[2] if b_given else None
    if not isinstance(w, np.ndarray) or w.ndim != 4 or w.dtype != np.float32 or (b_given and b is None):
        return None
    if not info.float32_or_unknown(0):
        return None
    a = info.attrs
    x_shape = info.shapes[0]
    spatial = tuple(x_shape[2:]) if x_shape is not None and len(x_shape) == 4 else None
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and (spatial is None or not all(isinstance(d, int) for d in spatial)):
        return None  # the pads depend on a size known only at run time
    kernel_shape = a.get("kernel_shape")
    if kernel_shape and list(kernel_shape) != list(w.shape[2:]):
        return None  # the generic kernel raises the error
    strides = _ints(a.get("strides"), 2, 1)
    dilations = _ints(a.get("dilations"), 2, 1)
    group = int(a.get("group", 1))
    if w.shape[1] * group == 0 or w.shape[0] % group:
        return None
    try:
        pads = resolve_pads("Conv", spatial or (0, 0), list(w.shape[2:]), strides, dilations, a.get("pads"), auto_pad)
    except (KernelError, ShapeInferenceError):
        return None
    return packed_conv2d(w, b, pads, strides, dilations, group, x_shape, activation, activation_params, post, bf16)


@prepares(conv)
def prepare_conv(info: NodeInfo, bf16: bool = False):
    """The oneDNN kernel of one Conv node (float32, or bf16 operands with ``bf16``), or None."""
    packed = packed_conv(info, bf16=bf16)
    if packed is None:
        return None

    @absorbing(1, 2)
    def conv_onednn(x, w, b=None, **attrs):
        if x.ndim != 4 or x.dtype != np.float32 or x.shape[1] != w.shape[1] * packed.group:
            return unplanned(conv, "Conv", x, w, b, **attrs)
        return packed(x)

    return conv_onednn


# ----------------------------------------------------------------------------- ConvTranspose
@register("ConvTranspose", since=1)
def conv_transpose(
    x,
    w,
    b=None,
    *,
    auto_pad="NOTSET",
    dilations=None,
    group=1,
    kernel_shape=None,
    output_padding=None,
    output_shape=None,
    pads=None,
    strides=None,
):
    op = "ConvTranspose"
    nd = x.ndim - 2
    n, c = x.shape[:2]
    group = int(group)
    if w.shape[0] != c or c % group:
        raise ShapeInferenceError(f"{op}: X shape {x.shape} and W shape {w.shape} with group {group}: W.shape[0] must equal C")
    kernel = list(w.shape[2:])
    strides = _ints(strides, nd, 1)
    dilations = _ints(dilations, nd, 1)
    out_pad = _ints(output_padding, nd, 0)
    cg, mg = c // group, w.shape[1]
    m = mg * group
    in_sp = list(x.shape[2:])
    full = [(in_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(nd)]
    if output_shape is not None and len(output_shape) > 0:
        target = list(output_shape)[-nd:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [in_sp[i] * strides[i] for i in range(nd)]
    else:
        target = None
    if target is not None:  # pad to reach the target size, the odd unit at the end for SAME_UPPER
        total = [full[i] + out_pad[i] - target[i] for i in range(nd)]
        if auto_pad == "SAME_UPPER":
            pb = [t // 2 for t in total]
        else:
            pb = [t - t // 2 for t in total]
        pe = [t - p for t, p in zip(total, pb)]
    else:
        p = _ints(pads, 2 * nd, 0) if auto_pad != "VALID" else [0] * (2 * nd)
        pb, pe = p[:nd], p[nd:]
    out_sp = [full[i] + out_pad[i] - pb[i] - pe[i] for i in range(nd)]

    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt, copy=False)
    wc = w.astype(cdt, copy=False)
    s_size = math.prod(in_sp)
    k_size = math.prod(kernel)
    # cols[n, g, (mg, *K), S] = W_g^T @ x_g
    wt = wc.reshape(group, cg, mg * k_size).transpose(0, 2, 1)
    cols = np.matmul(wt, xc.reshape(n, group, cg, s_size))
    cols = cols.reshape((n, m) + tuple(kernel) + tuple(in_sp))
    buf_sp = [max(full[i] + out_pad[i], pb[i] + out_sp[i]) for i in range(nd)]
    lo = [min(0, pb[i]) for i in range(nd)]  # negative begin pads extend the canvas to the left
    buf_sp = [buf_sp[i] - lo[i] for i in range(nd)]
    buf = np.zeros((n, m) + tuple(buf_sp), dtype=cdt)
    for kidx in np.ndindex(*kernel):
        sl = tuple(
            slice(k * d - l, k * d - l + (s_in - 1) * s + 1, s)
            for k, d, l, s_in, s in zip(kidx, dilations, lo, in_sp, strides)
        )
        buf[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + kidx]
    y = buf[(slice(None), slice(None)) + tuple(slice(pb[i] - lo[i], pb[i] - lo[i] + out_sp[i]) for i in range(nd))]
    y = np.ascontiguousarray(y)
    _add_bias(y, None if b is None else b.astype(cdt, copy=False))
    return y.astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------- integer convs
def _int_conv(x, w, x_zp, w_zp, pads, strides, dilations, group):
    """Exact int32 convolution of (x - x_zp) and (w - w_zp) (computed in float64)."""
    xf = x.astype(np.float64)
    if x_zp is not None:
        xf -= np.asarray(x_zp).astype(np.float64).reshape(-1)[0] if np.asarray(x_zp).size == 1 else np.asarray(x_zp).astype(np.float64)
    wf = w.astype(np.float64)
    if w_zp is not None:
        wz = np.asarray(w_zp).astype(np.float64)
        wf -= wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz.reshape(())
    y = conv_core(xf, wf, strides, dilations, pads, group, op="ConvInteger")
    return y


@register("ConvInteger", since=10)
def conv_integer(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    kernel, strides, dilations, pads = _conv_params("ConvInteger", x, w, kernel_shape, strides, dilations, pads, auto_pad)
    y = _int_conv(x, w, x_zero_point, w_zero_point, pads, strides, dilations, int(group))
    return np.rint(y).astype(np.int32)


@register("QLinearConv", since=10)
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    kernel, strides, dilations, pads = _conv_params("QLinearConv", x, w, kernel_shape, strides, dilations, pads, auto_pad)
    acc = _int_conv(x, w, x_zero_point, w_zero_point, pads, strides, dilations, int(group))
    if b is not None:
        acc += b.astype(np.float64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    ws = np.asarray(w_scale, dtype=np.float64)
    scale = np.asarray(x_scale, dtype=np.float64) * ws / np.asarray(y_scale, dtype=np.float64)
    if scale.size > 1:
        scale = scale.reshape((1, -1) + (1,) * (acc.ndim - 2))
    y = np.rint(acc * scale)
    out_dt = np.asarray(y_zero_point).dtype if y_zero_point is not None else x.dtype
    if y_zero_point is not None:
        y += np.asarray(y_zero_point).astype(np.float64)
    info = np.iinfo(out_dt)
    return np.clip(y, info.min, info.max).astype(out_dt)


# ----------------------------------------------------------------------------- DeformConv
def _bilinear_zero(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample img (N, C, H, W) at float positions ys/xs (N, *P) with zeros outside -> (N, C, *P)."""
    n, c, h, w = img.shape
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    fy = ys - y0
    fx = xs - x0
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    flat = img.reshape(n, c, h * w)
    out = 0.0
    p_shape = ys.shape[1:]
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy = y0 + dy
            xx = x0 + dx
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = np.where(valid, np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1), 0).reshape(n, 1, -1)
            vals = np.take_along_axis(flat, np.broadcast_to(idx, (n, c, idx.shape[-1])), axis=2)
            wgt = (wy * wx * valid).reshape(n, 1, -1)
            out = out + vals * wgt
    return out.reshape((n, c) + p_shape)


@register("DeformConv", since=19)
def deform_conv(x, w, offset, b=None, mask=None, *, dilations=None, group=1, kernel_shape=None, offset_group=1, pads=None, strides=None):
    op = "DeformConv"
    if x.ndim != 4:
        raise KernelError(f"{op}: only 2-D inputs (N, C, H, W) are supported, got shape {x.shape}")
    n, c, h, wd = x.shape
    m = w.shape[0]
    kh, kw = w.shape[2:]
    group, og = int(group), int(offset_group)
    strides = _ints(strides, 2, 1)
    dilations = _ints(dilations, 2, 1)
    pads = _ints(pads, 4, 0)
    oh, ow = offset.shape[2:]
    cdt = _compute_dtype(x.dtype)
    off = offset.astype(cdt).reshape(n, og, kh, kw, 2, oh, ow)
    msk = None if mask is None else mask.astype(cdt).reshape(n, og, kh, kw, oh, ow)
    base_y = (np.arange(oh) * strides[0] - pads[0]).reshape(1, oh, 1)
    base_x = (np.arange(ow) * strides[1] - pads[1]).reshape(1, 1, ow)
    cpo = c // og
    xc = x.astype(cdt, copy=False)
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=cdt)
    for gi in range(og):
        sub = xc[:, gi * cpo:(gi + 1) * cpo]
        for a in range(kh):
            for bb in range(kw):
                ys = base_y + a * dilations[0] + off[:, gi, a, bb, 0]
                xs = base_x + bb * dilations[1] + off[:, gi, a, bb, 1]
                v = _bilinear_zero(sub, ys, xs)
                if msk is not None:
                    v = v * msk[:, gi, a, bb][:, None]
                cols[:, gi * cpo:(gi + 1) * cpo, a, bb] = v
    cg, mg = c // group, m // group
    cols = cols.reshape(n, group, cg * kh * kw, oh * ow)
    y = np.matmul(w.astype(cdt).reshape(group, mg, cg * kh * kw), cols).reshape(n, m, oh, ow)
    _add_bias(y, None if b is None else b.astype(cdt))
    return y.astype(x.dtype, copy=False)


# ----------------------------------------------------------------------------- CausalConvWithState
@register("CausalConvWithState", since=27)
def causal_conv_with_state(ctx, x, weight, bias=None, past_state=None, *, activation="none"):
    op = "CausalConvWithState"
    if activation not in ("none", "silu", "swish"):
        raise KernelError(f"{op} (node {ctx.node_name!r}): activation {activation!r} is not one of none/silu/swish")
    if x.ndim != 3 or weight.ndim != 3:
        raise ShapeInferenceError(f"{op}: input {x.shape} and weight {weight.shape} must be rank 3")
    bsz, c, length = x.shape
    k = weight.shape[2]
    if past_state is None:
        past_state = np.zeros((bsz, c, k - 1), dtype=x.dtype)
    padded = np.concatenate([past_state.astype(x.dtype, copy=False), x], axis=2)
    cdt = _compute_dtype(x.dtype)
    pc = padded.astype(cdt, copy=False)
    wc = weight.astype(cdt, copy=False).reshape(c, k)
    y = pc[:, :, 0:length] * wc[:, 0:1]
    for t in range(1, k):
        y += pc[:, :, t:t + length] * wc[:, t:t + 1]
    if bias is not None:
        y += bias.astype(cdt).reshape(1, c, 1)
    if activation in ("silu", "swish"):
        y = y.astype(x.dtype).astype(np.float32)
        y = y / (1.0 + np.exp(-y))
    present = np.ascontiguousarray(padded[:, :, padded.shape[2] - (k - 1):])
    return y.astype(x.dtype, copy=False), present
