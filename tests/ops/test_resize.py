"""Resize / Upsample against onnxruntime."""
from __future__ import annotations

from functools import partial

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.ops import _ortref
from tests.ops._ortref import run_tuili

# float outputs of these kernels are checked at this tolerance unless a test says otherwise
assert_same = partial(_ortref.assert_same, rtol=1e-4, atol=1e-5)

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
CTMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"]


@st.composite
def resize_case(draw):
    h, w = draw(st.integers(1, 9)), draw(st.integers(2, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
    mode = draw(st.sampled_from(["nearest", "linear", "cubic"]))
    attrs = dict(mode=mode, coordinate_transformation_mode=draw(st.sampled_from(CTMS)))
    if mode == "nearest":
        # onnxruntime picks other pixels than the ONNX spec for nearest + half_pixel_symmetric
        assume(attrs["coordinate_transformation_mode"] != "half_pixel_symmetric")
        attrs["nearest_mode"] = draw(st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]))
    if mode == "cubic":
        attrs["cubic_coeff_a"] = draw(st.sampled_from([-0.75, -0.5]))
        attrs["exclude_outside"] = draw(st.integers(0, 1))
    use_sizes = draw(st.booleans())
    if use_sizes:
        sizes = np.array([1, 2, draw(st.integers(1, 14)), draw(st.integers(1, 14))], np.int64)
        return [x, None, None, sizes], attrs
    scales = np.array([1, 1, draw(st.sampled_from([0.5, 0.6, 1.0, 1.5, 2.0, 3.0])), draw(st.sampled_from([0.5, 0.8, 1.0, 1.7, 2.0]))], np.float32)
    assume(int(scales[2] * h) > 0 and int(scales[3] * w) > 0)
    # onnxruntime copies an axis whose output length equals the input's even if its scale is not 1
    assume(all(sc == 1.0 or int(sc * n) != n for sc, n in ((scales[2], h), (scales[3], w))))
    if attrs["coordinate_transformation_mode"] == "align_corners":
        # onnxruntime divides by (out_len - 1), ONNX by (scale * in_len - 1): same when integral
        assume(float(scales[2] * h).is_integer() and float(scales[3] * w).is_integer())
    return [x, None, scales], attrs


@SETTINGS
@given(resize_case())
def test_resize_matches_ort(case):
    inputs, attrs = case
    if attrs["coordinate_transformation_mode"] == "half_pixel_symmetric":
        opset = 19
    else:
        opset = 13
    assert_same("Resize", inputs, opset=opset, rtol=1e-4, atol=1e-4, **attrs)


def test_resize_uint8_image_linear():
    x = np.random.default_rng(1).integers(0, 256, (1, 3, 5, 7)).astype(np.uint8)
    sizes = np.array([1, 3, 9, 4], np.int64)
    # uint8 outputs may differ by one level at .5 rounding boundaries
    assert_same("Resize", [x, None, None, sizes], opset=13, mode="linear", atol=1)


def test_resize_tf_crop_and_resize_extrapolation():
    x = np.random.default_rng(2).standard_normal((1, 1, 6, 6)).astype(np.float32)
    roi = np.array([0, 0, -0.2, 0.1, 1, 1, 0.8, 1.3], np.float32)
    sizes = np.array([1, 1, 4, 5], np.int64)
    assert_same("Resize", [x, roi, None, sizes], opset=13, mode="linear",
                coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.0)


def test_resize_antialias_axes_and_aspect_ratio():
    x = np.random.default_rng(3).standard_normal((1, 2, 12, 10)).astype(np.float32)
    assert_same("Resize", [x, None, np.array([0.4, 0.55], np.float32)], opset=18, mode="linear", antialias=1, axes=[2, 3], rtol=1e-4, atol=1e-4)
    assert_same("Resize", [x, None, None, np.array([5, 6], np.int64)], opset=18, mode="cubic", antialias=1, axes=[3, 2], rtol=1e-4, atol=1e-4)
    for policy in ("not_larger", "not_smaller"):
        assert_same("Resize", [x, None, None, np.array([7, 7], np.int64)], opset=18, mode="nearest", axes=[2, 3], keep_aspect_ratio_policy=policy)


def test_upsample_and_resize10_nearest():
    x = np.random.default_rng(4).standard_normal((1, 2, 3, 4)).astype(np.float32)
    scales = np.array([1, 1, 2, 3], np.float32)
    assert_same("Upsample", [x, scales], opset=9, mode="nearest")
    assert_same("Resize", [x, scales], opset=10, mode="nearest")
    assert_same("Resize", [x, scales], opset=10, mode="linear")
    (y,) = run_tuili("Upsample", [x, scales], opset=9, mode="nearest")
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x, 2, axis=2), 3, axis=3))


def test_resize_linear_keeps_inf_local():
    x = np.zeros((1, 1, 3, 4), np.float32)
    x[0, 0, 1, 2] = np.inf
    (y,) = run_tuili("Resize", [x, None, np.array([1, 1, 2, 2], np.float32)], opset=13, mode="linear")
    assert np.isinf(y).any() and np.isfinite(y[0, 0, :, 0]).all()
