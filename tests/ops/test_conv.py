"""Conv family kernels against onnxruntime (property tests) plus targeted paths."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.ops import _ortref
from tests.ops._intref import assert_exact
from tests.ops._ortref import run_ort, run_tuili
from tuili.errors import ShapeInferenceError
from tuili.ops.conv import conv

# float outputs of these kernels are checked at this tolerance unless a test says otherwise
assert_same = partial(_ortref.assert_same, rtol=1e-4, atol=1e-5)

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def conv_case(draw, depthwise=False):
    nd = draw(st.sampled_from([1, 2, 2, 2, 3]))
    n = draw(st.integers(1, 2))
    if depthwise:
        group = draw(st.integers(2, 6))
        cin = cout = group
    else:
        group = draw(st.sampled_from([1, 1, 2]))
        cin = group * draw(st.integers(1, 3))
        cout = group * draw(st.integers(1, 3))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    s = [draw(st.integers(1, 2)) for _ in range(nd)]
    d = [draw(st.integers(1, 2)) for _ in range(nd)]
    p = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
    sp = [draw(st.integers((k[i] - 1) * d[i] + 1, 7)) for i in range(nd)]
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((n, cin, *sp)).astype(np.float32)
    w = rng.standard_normal((cout, cin // group, *k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if draw(st.booleans()) else None
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = dict(group=group, strides=s, dilations=d, kernel_shape=k)
    if auto_pad == "NOTSET":
        attrs["pads"] = p
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad != "VALID":
            attrs["dilations"] = [1] * nd  # onnxruntime rejects dilation with SAME_*
    return x, w, b, attrs


@SETTINGS
@given(conv_case())
def test_conv_matches_ort(case):
    x, w, b, attrs = case
    assert_same("Conv", [x, w, b], opset=17, rtol=1e-4, atol=1e-4, **attrs)


@SETTINGS
@given(conv_case(depthwise=True))
def test_depthwise_conv_matches_ort(case):
    x, w, b, attrs = case
    assert_same("Conv", [x, w, b], opset=17, rtol=1e-4, atol=1e-4, **attrs)


@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2), (7, 1, 1), (7, 2, 1), (5, 1, 2)])
def test_depthwise_2d_numba_paths(k, s, d):
    rng = np.random.default_rng(k * 100 + s * 10 + d)
    x = rng.standard_normal((2, 8, 13, 11)).astype(np.float32)
    w = rng.standard_normal((8, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    p = (k - 1) * d // 2
    assert_same("Conv", [x, w, b], opset=17, rtol=1e-4, atol=1e-4, group=8, strides=[s, s], dilations=[d, d], pads=[p] * 4)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_conv_keeps_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 6, 6)).astype(dtype)
    w = rng.standard_normal((3, 4, 3, 3)).astype(dtype)
    y = conv(x, w, pads=[1, 1, 1, 1])
    assert y.dtype == dtype
    if dtype == np.float16:
        assert_same("Conv", [x, w], opset=17, rtol=1e-2, atol=1e-2, pads=[1, 1, 1, 1])
    else:  # onnxruntime has no double Conv: compare with the float32 reference
        (ref,) = run_ort("Conv", [x.astype(np.float32), w.astype(np.float32)], opset=17, pads=[1, 1, 1, 1])
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_conv_does_not_mutate_inputs():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    copies = [a.copy() for a in (x, w, b)]
    conv(x, w, b, group=4, pads=[1, 1, 1, 1])
    conv(x, np.ones((2, 4, 1, 1), np.float32), b[:2])
    for a, c in zip((x, w, b), copies):
        assert np.array_equal(a, c)


def test_conv_bad_group_raises():
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ShapeInferenceError, match="group"):
        conv(x, w, group=2)


@st.composite
def convt_case(draw):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    group = draw(st.sampled_from([1, 2]))
    cin = group * draw(st.integers(1, 2))
    mg = draw(st.integers(1, 3))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    s = [draw(st.integers(1, 3)) for _ in range(nd)]
    d = [draw(st.integers(1, 2)) for _ in range(nd)]
    sp = [draw(st.integers(1, 5)) for _ in range(nd)]
    op_ = [draw(st.integers(0, s[i] - 1)) for i in range(nd)]  # onnxruntime requires output_padding < stride
    p = [draw(st.integers(0, (k[i] - 1) * d[i])) for i in range(nd)] * 2
    full = [(sp[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 + op_[i] for i in range(nd)]
    assume(all(full[i] - 2 * p[i] > 0 for i in range(nd)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((1, cin, *sp)).astype(np.float32)
    w = rng.standard_normal((cin, mg, *k)).astype(np.float32)
    b = rng.standard_normal(mg * group).astype(np.float32) if draw(st.booleans()) else None
    attrs = dict(group=group, strides=s, dilations=d, output_padding=op_, pads=p)
    return x, w, b, attrs


@SETTINGS
@given(convt_case())
def test_conv_transpose_matches_ort(case):
    x, w, b, attrs = case
    assert_same("ConvTranspose", [x, w, b], opset=17, rtol=1e-4, atol=1e-4, **attrs)


def test_conv_transpose_output_shape_and_same():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    assert_same("ConvTranspose", [x, w], opset=17, strides=[2, 2], output_shape=[9, 11])
    assert_same("ConvTranspose", [x, w], opset=17, strides=[2, 2], auto_pad="SAME_UPPER")


def test_conv_integer_and_qlinear_conv():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 255, (1, 3, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 127, (4, 3, 3, 3)).astype(np.int8)
    assert_exact("ConvInteger", [x, w, np.array(7, np.uint8), None], opset=10, weights=w, pads=[1, 1, 1, 1])
    wu = rng.integers(0, 255, (4, 3, 3, 3)).astype(np.uint8)
    assert_exact("ConvInteger", [x, wu, np.array(3, np.uint8), np.array(128, np.uint8)], opset=10, weights=wu, strides=[2, 2])
    b = rng.integers(-500, 500, 4).astype(np.int32)
    inputs = [x, np.array(0.02, np.float32), np.array(5, np.uint8), w, np.array([0.01, 0.02, 0.03, 0.015], np.float32),
              np.array([0, 0, 0, 0], np.int8), np.array(0.05, np.float32), np.array(120, np.uint8), b]
    assert_exact("QLinearConv", inputs, opset=10, weights=w, atol=1, pads=[1, 1, 1, 1])


def test_deform_conv_zero_offset_equals_conv():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    off = np.zeros((1, 2 * 9, 6, 6), np.float32)
    (y,) = run_tuili("DeformConv", [x, w, off], opset=22, group=2, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    np.testing.assert_allclose(y, conv(x, w, group=2, pads=[1, 1, 1, 1]), rtol=1e-5, atol=1e-5)


def test_causal_conv_state_streaming_matches_full():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 10)).astype(np.float32)
    w = rng.standard_normal((3, 1, 4)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    full, _ = run_tuili("CausalConvWithState", [x, w, b], n_outputs=2, opset=27, activation="silu")
    y1, st1 = run_tuili("CausalConvWithState", [x[:, :, :6], w, b], n_outputs=2, opset=27, activation="silu")
    y2, _ = run_tuili("CausalConvWithState", [x[:, :, 6:], w, b, st1], n_outputs=2, opset=27, activation="silu")
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=2), full, rtol=1e-5, atol=1e-6)
    # causal depthwise conv == Conv with left padding k-1
    ref = conv(x, w, b, group=3, pads=[3, 0])
    np.testing.assert_allclose(full, ref / (1 + np.exp(-ref)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("strides", [[2, 1], [1, 2]])
def test_depthwise_asymmetric_strides(k, strides):
    rng = np.random.default_rng(k + 10 * strides[0])
    x = rng.standard_normal((1, 6, 12, 15)).astype(np.float32)
    w = rng.standard_normal((6, 1, k, k)).astype(np.float32)
    assert_same("Conv", [x, w], opset=17, rtol=1e-4, atol=1e-4, group=6, strides=strides, pads=[k // 2, k // 2, k // 2 + 1, k // 2])
