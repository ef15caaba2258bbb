"""Vision kernels: GridSample, AffineGrid, RoiAlign, NonMaxSuppression, Col2Im, DepthToSpace, SpaceToDepth."""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError, ShapeInferenceError
from tuili.ops.conv import _ints
from tuili.ops.registry import register


def _fdt(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


# ----------------------------------------------------------------------------- GridSample
def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    rng = hi - lo
    if rng <= 0:
        return np.full_like(x, lo)
    out = x.copy()
    below = x < lo
    if below.any():
        dx = lo - x[below]
        n = np.trunc(dx / rng)
        r = dx - n * rng
        out[below] = np.where(n % 2 == 0, lo + r, hi - r)
    above = x > hi
    if above.any():
        dx = x[above] - hi
        n = np.trunc(dx / rng)
        r = dx - n * rng
        out[above] = np.where(n % 2 == 0, hi - r, lo + r)
    return out


def _cubic_coeffs(t: np.ndarray, a: float = -0.75):
    t1 = t + 1
    u = 1 - t
    u1 = u + 1
    return (
        ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * u - (a + 3)) * u * u + 1,
        ((a * u1 - 5 * a) * u1 + 8 * a) * u1 - 4 * a,
    )


def _grid_tap_index(i: np.ndarray, length: int, padding_mode: str, lo: float, hi: float):
    """Integer source index per tap -> (clamped index, validity mask or None)."""
    if padding_mode == "zeros":
        valid = (i >= 0) & (i < length)
        return np.clip(i, 0, length - 1).astype(np.int64), valid
    if padding_mode == "border":
        return np.clip(i, 0, length - 1).astype(np.int64), None
    r = np.trunc(_reflect(i.astype(np.float64), lo, hi))
    return np.clip(r, 0, length - 1).astype(np.int64), None


def _grid_sample(op, x, grid, mode, padding_mode, align_corners):
    if padding_mode not in ("zeros", "border", "reflection"):
        raise KernelError(f"{op}: unknown padding_mode {padding_mode!r}; expected zeros, border or reflection")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if mode not in ("nearest", "linear", "cubic"):
        raise KernelError(f"{op}: unknown mode {mode!r}; expected nearest, linear or cubic")
    n, c = x.shape[:2]
    dims = x.shape[2:]
    nd = len(dims)
    if grid.ndim != nd + 2 or grid.shape[0] != n or grid.shape[-1] != nd:
        raise ShapeInferenceError(f"{op}: grid shape {grid.shape} does not match input shape {x.shape} (need (N, *out, {nd}))")
    out_sp = grid.shape[1:-1]
    fdt = _fdt(x.dtype)
    npts = math.prod(out_sp)
    g = grid.reshape(n, npts, nd).astype(np.float32 if fdt == np.float32 else np.float64)
    coords = []  # per spatial dim (in X's dim order), shape (N, P)
    bounds = []
    for i in range(nd):
        length = dims[i]
        v = g[:, :, nd - 1 - i]  # grid's last dim is (x, y, z): reversed spatial order
        if align_corners:
            xi = (v + 1) / 2 * (length - 1)
            lo, hi = 0.0, float(length - 1)
        else:
            xi = ((v + 1) * length - 1) / 2
            lo, hi = -0.5, length - 0.5
        if mode == "nearest":
            xi = np.rint(xi)
        out = (xi < lo) | (xi > hi)
        if out.any():
            if padding_mode == "border":
                xi = np.where(out, np.clip(xi, 0, length - 1), xi)
            elif padding_mode == "reflection":
                xi = np.where(out, _reflect(xi, lo, hi), xi)
        coords.append(xi)
        bounds.append((lo, hi))

    # per dim: list of (index (N,P), weight (N,P) or None, valid or None)
    per_dim = []
    for i in range(nd):
        xi, (lo, hi), length = coords[i], bounds[i], dims[i]
        taps = []
        if mode == "nearest":
            idx, valid = _grid_tap_index(xi.astype(np.int64), length, padding_mode, lo, hi)
            taps.append((idx, None, valid))
        else:
            x0 = np.floor(xi)
            t = (xi - x0).astype(fdt)
            x0 = x0.astype(np.int64)
            if mode == "linear":
                ws, offs = (1 - t, t), (0, 1)
            else:
                ws, offs = _cubic_coeffs(t), (-1, 0, 1, 2)
            for w, o in zip(ws, offs):
                idx, valid = _grid_tap_index(x0 + o, length, padding_mode, lo, hi)
                taps.append((idx, w, valid))
        per_dim.append(taps)

    flat = x.reshape(n, c, -1)
    strides = [math.prod(dims[i + 1:]) for i in range(nd)]
    acc = np.zeros((n, c, npts), dtype=fdt)
    for combo in np.ndindex(*[len(t) for t in per_dim]):
        lin = 0
        w = None
        valid = None
        for i, k in enumerate(combo):
            idx, wi, vi = per_dim[i][k]
            lin = lin + idx * strides[i]
            if wi is not None:
                w = wi if w is None else w * wi
            if vi is not None:
                valid = vi if valid is None else valid & vi
        vals = np.take_along_axis(flat, np.broadcast_to(lin[:, None, :], (n, c, npts)), axis=2).astype(fdt, copy=False)
        if valid is not None:
            w = valid.astype(fdt) if w is None else w * valid
        acc += vals if w is None else vals * w[:, None, :]
    return acc.reshape((n, c) + tuple(out_sp)).astype(x.dtype, copy=False)


@register("GridSample", since=16)
def grid_sample_16(x, grid, *, align_corners=0, mode="bilinear", padding_mode="zeros"):
    return _grid_sample("GridSample", x, grid, mode, padding_mode, align_corners)


@register("GridSample", since=20)
def grid_sample(x, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    return _grid_sample("GridSample", x, grid, mode, padding_mode, align_corners)


# ----------------------------------------------------------------------------- AffineGrid
@register("AffineGrid", since=20)
def affine_grid(theta, size, *, align_corners=0):
    size = [int(v) for v in np.asarray(size).reshape(-1)]
    n = size[0]
    sp = size[2:]
    nd = len(sp)
    if nd not in (2, 3) or theta.shape != (n, nd, nd + 1):
        raise ShapeInferenceError(f"AffineGrid: theta shape {theta.shape} does not fit size {size} (need (N, {nd}, {nd + 1}))")
    fdt = _fdt(theta.dtype)

    def axis_coords(length):
        if align_corners:
            return np.linspace(-1.0, 1.0, length) if length > 1 else np.zeros(1)
        return (np.arange(length) * 2.0 + 1.0) / length - 1.0

    # base grid (*sp, nd+1) with coordinates in (x, y[, z]) order + homogeneous 1
    mesh = np.meshgrid(*[axis_coords(s) for s in sp], indexing="ij")  # in (D,) H, W order
    base = np.stack([m for m in reversed(mesh)] + [np.ones(sp)], axis=-1).astype(fdt)
    out = base.reshape(1, -1, nd + 1) @ theta.astype(fdt).transpose(0, 2, 1)
    return out.reshape((n,) + tuple(sp) + (nd,)).astype(theta.dtype, copy=False)


# ----------------------------------------------------------------------------- RoiAlign
def _roi_axis(start, bin_size, pooled, grid, length):
    """Sample positions along one axis -> (low, high, w_low, w_high, valid), each (pooled*grid,)."""
    p = np.arange(pooled)[:, None]
    g = np.arange(grid)[None, :]
    pos = (start + p * bin_size + (g + 0.5) * bin_size / grid).reshape(-1)
    valid = (pos >= -1.0) & (pos <= length)
    pos = np.maximum(pos, 0.0)
    low = np.floor(pos).astype(np.int64)  # pos >= 0 so floor == int()
    at_end = low >= length - 1
    low = np.where(at_end, length - 1, low)
    high = np.where(at_end, length - 1, low + 1)
    pos = np.where(at_end, low.astype(pos.dtype), pos)
    lw = pos - low
    return low, high, 1.0 - lw, lw, valid


def _roi_align(op, x, rois, batch_indices, mode, output_height, output_width, sampling_ratio, spatial_scale, half_pixel):
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4:
        raise ShapeInferenceError(f"{op}: X must be (N, C, H, W) and rois (R, 4); got {x.shape} and {rois.shape}")
    if mode not in ("avg", "max"):
        raise KernelError(f"{op}: unknown mode {mode!r}; expected avg or max")
    n, c, h, w = x.shape
    r = rois.shape[0]
    oh, ow = int(output_height), int(output_width)
    fdt = _fdt(x.dtype)
    y = np.zeros((r, c, oh, ow), dtype=fdt)
    bidx = np.asarray(batch_indices).reshape(-1).astype(np.int64)
    if bidx.size != r:
        raise ShapeInferenceError(f"{op}: batch_indices has {bidx.size} entries for {r} rois")
    if r and (bidx.min() < 0 or bidx.max() >= n):
        raise KernelError(f"{op}: batch_indices out of range [0, {n})")
    offset = 0.5 if half_pixel else 0.0
    rf = rois.astype(np.float64)
    for i in range(r):
        x1, y1, x2, y2 = (rf[i] * spatial_scale - offset).tolist()
        rw, rh = x2 - x1, y2 - y1
        if not half_pixel:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = int(sampling_ratio) if sampling_ratio > 0 else int(math.ceil(rh / oh))
        gw = int(sampling_ratio) if sampling_ratio > 0 else int(math.ceil(rw / ow))
        if gh <= 0 or gw <= 0:
            continue
        yl, yh, wyl, wyh, vy = _roi_axis(y1, bh, oh, gh, h)
        xl, xh, wxl, wxh, vx = _roi_axis(x1, bw, ow, gw, w)
        img = x[bidx[i]].astype(fdt, copy=False)
        vmask = (vy[:, None] & vx[None, :]).astype(fdt)
        terms = []
        for yi, wy in ((yl, wyl), (yh, wyh)):
            rows = img[:, yi]  # (C, Y, W)
            for xi, wx in ((xl, wxl), (xh, wxh)):
                wgt = (wy[:, None] * wx[None, :]).astype(fdt) * vmask
                terms.append(rows[:, :, xi] * wgt)
        if mode == "avg":
            s = terms[0] + terms[1] + terms[2] + terms[3]
            y[i] = s.reshape(c, oh, gh, ow, gw).sum(axis=(2, 4)) / max(gh * gw, 1)
        else:
            m = np.maximum(np.maximum(terms[0], terms[1]), np.maximum(terms[2], terms[3]))
            y[i] = m.reshape(c, oh, gh, ow, gw).max(axis=(2, 4))
    return y.astype(x.dtype, copy=False)


@register("RoiAlign", since=10)
def roi_align_10(x, rois, batch_indices, *, mode="avg", output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    return _roi_align("RoiAlign", x, rois, batch_indices, mode, output_height, output_width, sampling_ratio, spatial_scale, False)


@register("RoiAlign", since=16)
def roi_align(x, rois, batch_indices, *, coordinate_transformation_mode="half_pixel", mode="avg", output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise KernelError(f"RoiAlign: unknown coordinate_transformation_mode {coordinate_transformation_mode!r}")
    return _roi_align(
        "RoiAlign", x, rois, batch_indices, mode, output_height, output_width, sampling_ratio, spatial_scale,
        coordinate_transformation_mode == "half_pixel",
    )


# ----------------------------------------------------------------------------- NonMaxSuppression
def _corners(b: np.ndarray, center: int) -> np.ndarray:
    """-> (n, 4) as (y_min, x_min, y_max, x_max)."""
    if center:
        xc, yc, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        return np.stack([yc - bh / 2, xc - bw / 2, yc + bh / 2, xc + bw / 2], axis=1)
    y1 = np.minimum(b[:, 0], b[:, 2])
    y2 = np.maximum(b[:, 0], b[:, 2])
    x1 = np.minimum(b[:, 1], b[:, 3])
    x2 = np.maximum(b[:, 1], b[:, 3])
    return np.stack([y1, x1, y2, x2], axis=1)


@register("NonMaxSuppression", since=10)
def non_max_suppression(boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None, *, center_point_box=0):
    op = "NonMaxSuppression"
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise ShapeInferenceError(f"{op}: boxes {boxes.shape} must be (B, N, 4) and scores {scores.shape} (B, C, N)")
    max_out = int(np.asarray(max_output_boxes_per_class).reshape(-1)[0]) if max_output_boxes_per_class is not None and np.asarray(max_output_boxes_per_class).size else 0
    iou_thr = float(np.asarray(iou_threshold).reshape(-1)[0]) if iou_threshold is not None and np.asarray(iou_threshold).size else 0.0
    score_thr = float(np.asarray(score_threshold).reshape(-1)[0]) if score_threshold is not None and np.asarray(score_threshold).size else None
    selected = []
    if max_out > 0:
        for b in range(boxes.shape[0]):
            corners = _corners(boxes[b].astype(np.float64), center_point_box)
            areas = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
            for cl in range(scores.shape[1]):
                s = scores[b, cl].astype(np.float64)
                cand = np.nonzero(s > score_thr)[0] if score_thr is not None else np.arange(s.size)
                if cand.size == 0:
                    continue
                order = cand[np.argsort(-s[cand], kind="stable")]
                cb = corners[order]
                ca = areas[order]
                iy1 = np.maximum(cb[:, None, 0], cb[None, :, 0])
                ix1 = np.maximum(cb[:, None, 1], cb[None, :, 1])
                iy2 = np.minimum(cb[:, None, 2], cb[None, :, 2])
                ix2 = np.minimum(cb[:, None, 3], cb[None, :, 3])
                inter = np.clip(iy2 - iy1, 0, None) * np.clip(ix2 - ix1, 0, None)
                union = ca[:, None] + ca[None, :] - inter
                with np.errstate(divide="ignore", invalid="ignore"):
                    iou = np.where((inter > 0) & (union > 0), inter / union, 0.0)
                alive = np.ones(order.size, dtype=bool)
                kept = 0
                for k in range(order.size):
                    if not alive[k]:
                        continue
                    selected.append((b, cl, int(order[k])))
                    kept += 1
                    if kept >= max_out:
                        break
                    alive &= ~(iou[k] > iou_thr)
    return np.asarray(selected, dtype=np.int64).reshape(-1, 3)


# ----------------------------------------------------------------------------- Col2Im
@register("Col2Im", since=18)
def col2im(x, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    op = "Col2Im"
    img = [int(v) for v in np.asarray(image_shape).reshape(-1)]
    blk = [int(v) for v in np.asarray(block_shape).reshape(-1)]
    nd = len(img)
    dil = _ints(dilations, nd, 1)
    st = _ints(strides, nd, 1)
    pd = _ints(pads, 2 * nd, 0)
    n, ck, l_total = x.shape
    kprod = math.prod(blk)
    if ck % kprod:
        raise ShapeInferenceError(f"{op}: input dim 1 ({ck}) is not a multiple of prod(block_shape) {kprod}")
    c = ck // kprod
    nblocks = [(img[i] + pd[i] + pd[nd + i] - (dil[i] * (blk[i] - 1) + 1)) // st[i] + 1 for i in range(nd)]
    if math.prod(nblocks) != l_total:
        raise ShapeInferenceError(f"{op}: input has {l_total} blocks, image/block/pads/strides imply {math.prod(nblocks)}")
    cols = x.reshape((n, c) + tuple(blk) + tuple(nblocks))
    buf = np.zeros((n, c) + tuple(img[i] + pd[i] + pd[nd + i] for i in range(nd)), dtype=x.dtype)
    for kidx in np.ndindex(*blk):
        sl = tuple(slice(k * d, k * d + (nb - 1) * s + 1, s) for k, d, nb, s in zip(kidx, dil, nblocks, st))
        buf[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + kidx]
    crop = tuple(slice(pd[i], pd[i] + img[i]) for i in range(nd))
    return np.ascontiguousarray(buf[(slice(None), slice(None)) + crop])


# ----------------------------------------------------------------------------- Depth/Space
def _block_input(op, x, blocksize):
    """DepthToSpace / SpaceToDepth input: checks it is 4-D, returns (N, C, H, W, blocksize)."""
    if x.ndim != 4:
        raise ShapeInferenceError(f"{op}: input must be 4-D, got {x.shape}")
    return (*x.shape, int(blocksize))


def _check_mode(op, mode):
    if mode not in ("DCR", "CRD"):
        raise KernelError(f"{op}: unknown mode {mode!r}; expected DCR or CRD")


@register("DepthToSpace", since=1)
def depth_to_space(x, *, blocksize, mode="DCR"):
    b, c, h, w, bs = _block_input("DepthToSpace", x, blocksize)
    if c % (bs * bs):
        raise ShapeInferenceError(f"DepthToSpace: channels {c} not divisible by blocksize^2 = {bs * bs}")
    _check_mode("DepthToSpace", mode)
    if mode == "DCR":
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (bs * bs), h * bs, w * bs)


@register("SpaceToDepth", since=1)
def space_to_depth(x, *, blocksize, mode="DCR"):
    b, c, h, w, bs = _block_input("SpaceToDepth", x, blocksize)
    if h % bs or w % bs:
        raise ShapeInferenceError(f"SpaceToDepth: spatial dims {(h, w)} not divisible by blocksize {bs}")
    _check_mode("SpaceToDepth", mode)
    t = x.reshape(b, c, h // bs, bs, w // bs, bs)
    t = t.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else t.transpose(0, 1, 3, 5, 2, 4)
    return t.reshape(b, c * bs * bs, h // bs, w // bs)
