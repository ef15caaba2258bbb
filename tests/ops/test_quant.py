"""Quantization kernels against onnxruntime; integer products against the exact reference."""
from __future__ import annotations

from functools import partial

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops import _ortref
from tests.ops._intref import assert_exact
from tests.ops._ortref import run_tuili

# float outputs of these kernels are checked at this tolerance unless a test says otherwise
assert_same = partial(_ortref.assert_same, rtol=1e-4, atol=1e-5)

SETTINGS = settings(max_examples=30, deadline=None)


@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from([np.uint8, np.int8, np.uint16, np.int16]), st.sampled_from(["tensor", "axis"]))
def test_quantize_dequantize_int_matches_ort(seed, qdt, gran):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 3, 4)) * 50).astype(np.float32)
    if gran == "tensor":
        scale = np.array(rng.uniform(0.05, 2), np.float32)
        zp = np.array(rng.integers(np.iinfo(qdt).min, np.iinfo(qdt).max // 2 + 1), qdt)
    else:
        scale = rng.uniform(0.05, 2, 3).astype(np.float32)
        zp = rng.integers(np.iinfo(qdt).min, np.iinfo(qdt).max // 2 + 1, 3).astype(qdt)
    (q,) = assert_same("QuantizeLinear", [x, scale, zp], opset=21, axis=1, atol=0)
    assert_same("DequantizeLinear", [q, scale, zp], opset=21, axis=1)


def test_quantize_blocked_matches_ort():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    scale = rng.uniform(0.01, 0.1, (3, 2)).astype(np.float32)
    zp = rng.integers(-10, 10, (3, 2)).astype(np.int8)
    (q,) = assert_same("QuantizeLinear", [x, scale, zp], opset=21, axis=1, block_size=4, atol=0)
    assert_same("DequantizeLinear", [q, scale, zp], opset=21, axis=1, block_size=4)


@pytest.mark.parametrize("qdt", [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_quantize_float8_roundtrip(qdt):
    x = np.array([0.0, 0.3, -1.7, 100.0, -5000.0, 1e6], np.float32)
    scale = np.array(0.5, np.float32)
    (q,) = run_tuili("QuantizeLinear", [x, scale, np.zeros((), qdt)], opset=21)
    assert q.dtype == qdt
    np.testing.assert_array_equal(q, (x / 0.5).clip(float(ml_dtypes.finfo(qdt).min), float(ml_dtypes.finfo(qdt).max)).astype(qdt))
    (y,) = run_tuili("DequantizeLinear", [q, scale, np.zeros((), qdt)], opset=21)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, q.astype(np.float32) * 0.5)


@pytest.mark.parametrize("qdt,lo,hi", [(ml_dtypes.int4, -8, 7), (ml_dtypes.uint4, 0, 15)])
def test_quantize_int4_saturates(qdt, lo, hi):
    x = np.linspace(-20, 20, 9, dtype=np.float32)
    (q,) = run_tuili("QuantizeLinear", [x, np.array(2.0, np.float32), np.zeros((), qdt)], opset=21)
    assert q.dtype == qdt
    np.testing.assert_array_equal(q.astype(np.int32), np.clip(np.rint(x / 2), lo, hi).astype(np.int32))


@SETTINGS
@given(st.integers(0, 2**31), st.floats(-3, 3), st.floats(0.1, 5))
def test_dynamic_quantize_linear_exact(seed, shift, spread):
    x = (np.random.default_rng(seed).standard_normal((3, 7)) * spread + shift).astype(np.float32)
    assert_exact("DynamicQuantizeLinear", [x], n_outputs=3, opset=11, atol=1)


@SETTINGS
@given(st.integers(0, 2**31), st.sampled_from([np.uint8, np.int8]), st.booleans())
def test_qlinear_matmul_exact(seed, dt, batched):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dt)
    shape_a = (2, 3, 5) if batched else (3, 5)
    a = rng.integers(info.min, info.max + 1, shape_a).astype(dt)
    b = rng.integers(info.min, info.max + 1, (5, 4)).astype(dt)
    inputs = [a, np.array(0.02, np.float32), np.array(3, dt), b, np.array(0.03, np.float32), np.array(-2 if dt == np.int8 else 120, dt),
              np.array(0.5, np.float32), np.array(10, dt)]
    assert_exact("QLinearMatMul", inputs, opset=10, weights=b, atol=1)


@pytest.mark.parametrize("qdt", [np.uint8, np.int8])
def test_quantize_per_tensor_ties_and_saturation(qdt):
    # halfway values must round to even; out-of-range values saturate (fused 8-bit fast path)
    scale = np.float32(0.5)
    x = (np.arange(-300, 300, dtype=np.float32) + 0.5) * scale
    zp = np.array(3, qdt)
    (q,) = assert_same("QuantizeLinear", [x, np.array(scale), zp], opset=13, atol=0)
    info = np.iinfo(qdt)
    np.testing.assert_array_equal(q, np.clip(np.rint(x / scale) + 3, info.min, info.max).astype(qdt))
    assert_same("DequantizeLinear", [q, np.array([scale]), zp.reshape(1)], opset=13)
