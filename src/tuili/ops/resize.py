"""Resize and Upsample.

Resize is separable: every resized axis is processed once, as a gather of a few
taps per output coordinate followed by a weighted sum of the gathered slices.
Per axis we build ``idx`` (out, taps) of clamped source indices and ``w``
(out, taps) of weights (none for nearest), from the coordinate transformation,
the interpolation kernel (linear / cubic, optionally antialiased) and
exclude_outside; tf_crop_and_resize marks out-of-range outputs with the
extrapolation value. Work is O(output * taps) per axis, vectorized.
"""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError, ShapeInferenceError
from tuili.ops._numba import HAVE_NUMBA as _HAVE_NUMBA
from tuili.ops._numba import numba
from tuili.ops.registry import register

if _HAVE_NUMBA:
    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _taps_nb(x, idx, w, out):  # pragma: no cover - compiled
        """out[o, j, k] = sum_t w[j, t] * x[o, idx[j, t], k] for x (outer, L, inner)."""
        n_o, _, n_k = x.shape
        n_j, n_t = idx.shape
        if n_k == 1:
            for o in range(n_o):
                for j in range(n_j):
                    acc = 0.0
                    for t in range(n_t):
                        acc += w[j, t] * x[o, idx[j, t], 0]
                    out[o, j, 0] = acc
        else:
            for o in range(n_o):
                for j in range(n_j):
                    orow = out[o, j]
                    for k in range(n_k):
                        orow[k] = 0.0
                    for t in range(n_t):
                        wt = w[j, t]
                        xr = x[o, idx[j, t]]
                        for k in range(n_k):
                            orow[k] += wt * xr[k]
        return out

_CTMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)


def _source_coords(ctm, out_len, in_len, scale, roi_lo, roi_hi, f=np.float32):
    # The arithmetic precision decides nearest-mode ties. onnxruntime matches float32 math
    # for given scales (8.5 / 1.7f == 5.0f) and float64 math for scales derived from sizes
    # (4 / (8 / 7) == 3.5): ``f`` selects which.
    y = np.arange(out_len, dtype=f)
    scale = f(scale)
    roi_lo, roi_hi = f(roi_lo), f(roi_hi)
    out_f = scale * f(in_len)
    extrap = None
    if ctm == "half_pixel":
        x = (y + f(0.5)) / scale - f(0.5)
    elif ctm == "half_pixel_symmetric":
        adjustment = f(out_len) / out_f
        offset = f(in_len / 2.0) * (f(1.0) - adjustment)
        x = offset + (y + f(0.5)) / scale - f(0.5)
    elif ctm == "pytorch_half_pixel":
        # the spec (and onnxruntime) map a length-1 output to 0
        x = (y + f(0.5)) / scale - f(0.5) if out_len > 1 else np.zeros(out_len, dtype=f)
    elif ctm == "align_corners":
        # ONNX (and its backend tests) divide by scale * in_len - 1, not by out_len - 1; the two
        # differ only for scales whose product with the input length is not an integer
        x = y * f(in_len - 1) / (out_f - f(1)) if out_f != 1 else np.zeros(out_len, dtype=f)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        if out_f != 1:
            x = y * (roi_hi - roi_lo) * f(in_len - 1) / (out_f - f(1))
        else:
            x = np.full(out_len, (roi_hi - roi_lo) * f(in_len - 1) / f(2.0), dtype=f)
        x = x + roi_lo * f(in_len - 1)
        extrap = (x < 0) | (x > in_len - 1)
    else:
        raise KernelError(f"Resize: unknown coordinate_transformation_mode {ctm!r}; expected one of {', '.join(_CTMS)}")
    return x.astype(np.float64), extrap


def _nearest_index(x, nearest_mode, in_len, downsample=False):
    if nearest_mode == "round_prefer_floor":
        i = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        i = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        i = np.floor(x)
    elif nearest_mode == "ceil":
        i = np.ceil(x)
    elif nearest_mode == "simple":  # opset < 11 (Resize-10, Upsample)
        i = np.ceil(x) if downsample else np.floor(x)
    else:
        raise KernelError(f"Resize: unknown nearest_mode {nearest_mode!r}; expected round_prefer_floor, round_prefer_ceil, floor or ceil")
    return np.clip(i, 0, in_len - 1).astype(np.intp)


def _cubic_kernel(d, a):
    d = np.abs(d)
    d2 = d * d
    d3 = d2 * d
    near = (a + 2) * d3 - (a + 3) * d2 + 1
    far = a * d3 - 5 * a * d2 + 8 * a * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _axis_taps(mode, x, in_len, scale, nearest_mode, cubic_a, exclude_outside, antialias):
    """-> (idx (out, taps), weights (out, taps) or None)."""
    if mode == "nearest":
        return _nearest_index(x, nearest_mode, in_len, scale < 1)[:, None], None
    s = min(scale, 1.0) if antialias else 1.0
    support = 1.0 if mode == "linear" else 2.0
    start = int(math.floor(-support / s)) + 1
    n = 2 - 2 * start
    j = np.floor(x)[:, None] + (start + np.arange(n))[None, :]
    d = (j - x[:, None]) * s
    if mode == "linear":
        w = np.clip(1.0 - np.abs(d), 0.0, None)
    else:
        w = _cubic_kernel(d, cubic_a)
    if antialias and s < 1.0:
        w = w / w.sum(axis=1, keepdims=True)
    if exclude_outside:
        w = np.where((j < 0) | (j > in_len - 1), 0.0, w)
        tot = w.sum(axis=1, keepdims=True)
        w = w / np.where(tot == 0, 1.0, tot)
    idx = np.clip(j, 0, in_len - 1).astype(np.intp)
    return idx, w


def _apply_axis(data, axis, idx, w, cdt):
    if w is None:
        return np.take(data, idx[:, 0], axis=axis)
    if _HAVE_NUMBA and data.dtype in (np.float32, np.float64):
        shp = data.shape
        outer = math.prod(shp[:axis])
        inner = math.prod(shp[axis + 1:])
        if inner == 1 and shp[axis] <= 1024 and np.isfinite(data).all():
            # last axis: a gather per output element is slow; a dense (in x out) interpolation
            # matrix turns it into one BLAS matmul (finite data only: 0 * inf would leak NaN)
            dense = np.zeros((shp[axis], idx.shape[0]), dtype=data.dtype)
            np.add.at(dense, (idx, np.broadcast_to(np.arange(idx.shape[0])[:, None], idx.shape)), w.astype(data.dtype))
            y = np.ascontiguousarray(data).reshape(outer, shp[axis]) @ dense
            return y.reshape(shp[:axis] + (idx.shape[0],))
        x3 = np.ascontiguousarray(data).reshape(outer, shp[axis], inner)
        out = np.empty((outer, idx.shape[0], inner), dtype=data.dtype)
        _taps_nb(x3, np.ascontiguousarray(idx, dtype=np.intp), np.ascontiguousarray(w, dtype=data.dtype), out)
        return out.reshape(shp[:axis] + (idx.shape[0],) + shp[axis + 1:])
    shape = [1] * data.ndim
    shape[axis] = idx.shape[0]
    acc = None
    for k in range(idx.shape[1]):
        wk = w[:, k]
        if not np.any(wk):
            continue
        term = np.take(data, idx[:, k], axis=axis)
        term *= wk.astype(cdt).reshape(shape)
        if acc is None:
            acc = term
        else:
            acc += term
    if acc is None:
        shp = list(data.shape)
        shp[axis] = idx.shape[0]
        acc = np.zeros(shp, dtype=cdt)
    return acc


def resize_nd(
    x: np.ndarray,
    scales,
    sizes,
    *,
    roi=None,
    axes=None,
    mode="nearest",
    ctm="half_pixel",
    nearest_mode="round_prefer_floor",
    cubic_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    antialias=0,
    keep_aspect_ratio_policy="stretch",
) -> np.ndarray:
    r = x.ndim
    if mode not in ("nearest", "linear", "cubic"):
        raise KernelError(f"Resize: unknown mode {mode!r}; expected nearest, linear or cubic")
    if axes is None or len(axes) == 0:
        axes = list(range(r))
    else:
        axes = [int(a) + r if int(a) < 0 else int(a) for a in axes]
        if len(set(axes)) != len(axes) or any(a < 0 or a >= r for a in axes):
            raise ShapeInferenceError(f"Resize: axes {axes} invalid for input of rank {r}")
    na = len(axes)
    full_roi = None
    if roi is not None and np.asarray(roi).size:
        roi = np.asarray(roi, dtype=np.float64).reshape(-1)
        if roi.size != 2 * na:
            raise ShapeInferenceError(f"Resize: roi has {roi.size} values, expected {2 * na} (2 per resized axis)")
        full_roi = {a: (roi[i], roi[na + i]) for i, a in enumerate(axes)}

    in_shape = x.shape
    from_sizes = sizes is not None and np.asarray(sizes).size > 0
    scale_of = {}
    out_of = {}
    if sizes is not None and np.asarray(sizes).size:
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sizes) != na:
            raise ShapeInferenceError(f"Resize: sizes has {len(sizes)} values, expected {na}")
        sc = [sizes[i] / in_shape[a] for i, a in enumerate(axes)]
        if keep_aspect_ratio_policy in ("not_larger", "not_smaller"):
            s = min(sc) if keep_aspect_ratio_policy == "not_larger" else max(sc)
            sc = [s] * na
            sizes = [int(s * in_shape[a] + 0.5) for a in axes]
        elif keep_aspect_ratio_policy != "stretch":
            raise KernelError(f"Resize: unknown keep_aspect_ratio_policy {keep_aspect_ratio_policy!r}")
        for i, a in enumerate(axes):
            scale_of[a] = float(sc[i])
            out_of[a] = sizes[i]
    elif scales is not None and np.asarray(scales).size:
        sc = np.asarray(scales).reshape(-1)
        if sc.size != na:
            raise ShapeInferenceError(f"Resize: scales has {sc.size} values, expected {na} (input shape {in_shape})")
        if np.any(sc <= 0):
            raise KernelError(f"Resize: scales must be positive, got {sc.tolist()}")
        for i, a in enumerate(axes):
            scale_of[a] = float(sc[i])
            out_of[a] = int(math.floor(float(sc[i]) * in_shape[a]))
    else:
        raise KernelError("Resize: one of 'scales' or 'sizes' must be given (non-empty)")

    if antialias and mode == "nearest":
        antialias = 0
    is_int = x.dtype.kind in "iub"
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    data = x if mode == "nearest" else x.astype(cdt, copy=False)
    for a in axes:
        in_len, out_len, scale = in_shape[a], out_of[a], scale_of[a]
        lo, hi = full_roi.get(a, (0.0, 1.0)) if full_roi else (0.0, 1.0)
        if math.isclose(scale, 1.0) and out_len == in_len and (ctm != "tf_crop_and_resize" or (math.isclose(lo, 0.0) and math.isclose(hi, 1.0))):
            continue
        if out_len == 0:
            shp = list(data.shape)
            shp[a] = 0
            data = np.empty(shp, dtype=data.dtype)
            continue
        coords, extrap = _source_coords(ctm, out_len, in_len, scale, lo, hi, np.float64 if from_sizes else np.float32)
        idx, w = _axis_taps(mode, coords, in_len, scale, nearest_mode, cubic_a, exclude_outside, antialias)
        data = _apply_axis(data, a, idx, w, cdt)
        if extrap is not None and extrap.any():
            shape = [1] * data.ndim
            shape[a] = out_len
            if not data.flags.writeable or data.base is x:
                data = data.copy()
            np.copyto(data, np.asarray(extrapolation_value, dtype=cdt).astype(data.dtype), where=extrap.reshape(shape))
    if data.dtype != x.dtype:
        if is_int:
            info = np.iinfo(x.dtype)
            data = np.clip(np.rint(data), info.min, info.max)
        data = data.astype(x.dtype)
    elif data is x:
        data = x.copy()
    return data


@register("Resize", since=10)
def resize_10(x, scales, *, mode="nearest"):
    return resize_nd(x, scales, None, mode=mode, ctm="asymmetric", nearest_mode="simple")


@register("Resize", since=11)
def resize(
    x,
    roi=None,
    scales=None,
    sizes=None,
    *,
    antialias=0,
    axes=None,
    coordinate_transformation_mode="half_pixel",
    cubic_coeff_a=-0.75,
    exclude_outside=0,
    extrapolation_value=0.0,
    keep_aspect_ratio_policy="stretch",
    mode="nearest",
    nearest_mode="round_prefer_floor",
):
    return resize_nd(
        x,
        scales,
        sizes,
        roi=roi,
        axes=axes,
        mode=mode,
        ctm=coordinate_transformation_mode,
        nearest_mode=nearest_mode,
        cubic_a=cubic_coeff_a,
        exclude_outside=exclude_outside,
        extrapolation_value=extrapolation_value,
        antialias=antialias,
        keep_aspect_ratio_policy=keep_aspect_ratio_policy,
    )


def _upsample(x, scales, mode):
    if mode not in ("nearest", "linear", "bilinear"):
        raise KernelError(f"Upsample: unknown mode {mode!r}; expected nearest or linear")
    mode = "linear" if mode == "bilinear" else mode
    return resize_nd(x, scales, None, mode=mode, ctm="asymmetric", nearest_mode="simple")


@register("Upsample", since=1)
def upsample_1(x, *, height_scale=1.0, width_scale=1.0, mode="nearest"):
    scales = [1.0] * (x.ndim - 2) + [height_scale, width_scale]
    return _upsample(x, np.asarray(scales[-x.ndim:], dtype=np.float32), mode)


@register("Upsample", since=7)
def upsample_7(x, *, scales=None, mode="nearest"):
    if scales is None:
        raise KernelError("Upsample-7: attribute 'scales' is required")
    return _upsample(x, np.asarray(scales, dtype=np.float32), mode)


@register("Upsample", since=9)
def upsample_9(x, scales, *, mode="nearest"):
    return _upsample(x, scales, mode)
