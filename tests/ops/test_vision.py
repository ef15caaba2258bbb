"""Vision kernels (GridSample, AffineGrid, RoiAlign, NMS, Col2Im, Depth/Space) against onnxruntime."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops import _ortref
from tests.ops._ortref import run_tuili

# float outputs of these kernels are checked at this tolerance unless a test says otherwise
assert_same = partial(_ortref.assert_same, rtol=1e-4, atol=1e-5)

SETTINGS = settings(max_examples=30, deadline=None)


@SETTINGS
@given(
    st.integers(0, 2**31),
    st.sampled_from(["bilinear", "nearest", "bicubic"]),
    st.sampled_from(["zeros", "border", "reflection"]),
    st.integers(0, 1),
)
def test_grid_sample_2d_matches_ort(seed, mode, padding_mode, align_corners):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 6, size=2)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    # bicubic + border outside the image: onnxruntime (like PyTorch) clamps each tap, the ONNX
    # spec clamps the coordinate first; tuili follows the spec (backend node tests)
    lim = 1.0 if (mode, padding_mode) == ("bicubic", "border") else 1.3
    grid = rng.uniform(-lim, lim, (2, 4, 5, 2)).astype(np.float32)
    if mode == "nearest":  # keep away from .5 ties where float rounding may legitimately differ
        grid = np.round(grid * 8) / 8 + 0.01
    assert_same("GridSample", [x, grid], opset=16, mode=mode, padding_mode=padding_mode, align_corners=align_corners, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_3d_matches_ort(mode, padding_mode):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, (1, 2, 3, 4, 3)).astype(np.float32)
    assert_same("GridSample", [x, grid], opset=20, mode=mode, padding_mode=padding_mode, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [1, 2, 3, 4, 5]])
def test_affine_grid_matches_ort(align_corners, size):
    nd = len(size) - 2
    theta = np.random.default_rng(8).standard_normal((size[0], nd, nd + 1)).astype(np.float32)
    assert_same("AffineGrid", [theta, np.array(size, np.int64)], opset=20, align_corners=align_corners)


def test_affine_grid_feeds_grid_sample_identity():
    x = np.random.default_rng(9).standard_normal((1, 2, 4, 6)).astype(np.float32)
    theta = np.array([[[1, 0, 0], [0, 1, 0]]], np.float32)
    (grid,) = run_tuili("AffineGrid", [theta, np.array(x.shape, np.int64)], opset=20)
    (y,) = run_tuili("GridSample", [x, grid], opset=20)
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from(["avg", "max"]), st.sampled_from(["half_pixel", "output_half_pixel"]), st.integers(0, 2))
def test_roi_align_matches_ort(seed, mode, ctm, sampling_ratio):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)
    r = 4
    x1 = rng.uniform(-2, 8, r)
    y1 = rng.uniform(-2, 7, r)
    rois = np.stack([x1, y1, x1 + rng.uniform(0.5, 6, r), y1 + rng.uniform(0.5, 6, r)], axis=1).astype(np.float32)
    bi = rng.integers(0, 2, r).astype(np.int64)
    assert_same("RoiAlign", [x, rois, bi], opset=16, mode=mode, coordinate_transformation_mode=ctm,
                output_height=3, output_width=2, sampling_ratio=sampling_ratio, spatial_scale=0.9, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(0, 1), st.sampled_from([0.3, 0.5, 0.7]), st.booleans())
def test_nms_matches_ort(seed, center, iou, with_score_thr):
    rng = np.random.default_rng(seed)
    b, c, n = 2, 2, 12
    if center:
        boxes = np.concatenate([rng.uniform(0, 10, (b, n, 2)), rng.uniform(0.5, 4, (b, n, 2))], axis=2)
    else:
        p = rng.uniform(0, 10, (b, n, 2))
        q = p + rng.uniform(-4, 4, (b, n, 2))  # possibly flipped corners
        boxes = np.concatenate([p, q], axis=2)
    boxes = boxes.astype(np.float32)
    scores = rng.permutation(b * c * n).reshape(b, c, n).astype(np.float32) / (b * c * n)  # distinct scores
    inputs = [boxes, scores, np.array([5], np.int64), np.array([iou], np.float32)]
    if with_score_thr:
        inputs.append(np.array([0.3], np.float32))
    assert_same("NonMaxSuppression", inputs, opset=11, center_point_box=center)


@pytest.mark.parametrize("strides,pads,dilations", [([1, 1], [0, 0, 0, 0], [1, 1]), ([2, 1], [1, 0, 1, 2], [1, 2])])
def test_col2im_inverts_unfold(strides, pads, dilations):
    rng = np.random.default_rng(10)
    image, block = [6, 7], [2, 3]
    nb = [(image[i] + pads[i] + pads[2 + i] - (dilations[i] * (block[i] - 1) + 1)) // strides[i] + 1 for i in range(2)]
    cols = rng.standard_normal((2, 3 * 6, nb[0] * nb[1])).astype(np.float32)
    assert_same("Col2Im", [cols, np.array(image, np.int64), np.array(block, np.int64)], opset=18,
                strides=strides, pads=pads, dilations=dilations)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_space_roundtrip(mode):
    x = np.random.default_rng(11).standard_normal((2, 8, 3, 5)).astype(np.float32)
    assert_same("DepthToSpace", [x], opset=13, blocksize=2, mode=mode)
    (y,) = run_tuili("DepthToSpace", [x], opset=13, blocksize=2, mode=mode)
    (back,) = run_tuili("SpaceToDepth", [y], opset=28, blocksize=2, mode=mode)
    np.testing.assert_array_equal(back, x)
    assert_same("SpaceToDepth", [y], opset=13, blocksize=2)
