"""Normalization kernels against onnxruntime: LayerNormalization (numba row kernel and
numpy fallback), BatchNormalization (inference and training), InstanceNormalization,
GroupNormalization-18/21, RMSNormalization, LRN, LpNormalization, MVN, Dropout."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.ops._ortref import assert_same, run_ort, run_tuili

SETTINGS = settings(max_examples=25, deadline=None)

shapes = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=6)


def _f32(rng, shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


@SETTINGS
@given(shapes, st.data(), st.booleans(), st.sampled_from([1e-5, 1e-3]))
def test_layer_normalization(shape, data, with_bias, eps):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    norm_shape = shape[axis:]
    x = _f32(rng, shape, 3.0, 1.5)
    inputs = [x, _f32(rng, norm_shape), _f32(rng, norm_shape) if with_bias else None]
    while inputs[-1] is None:
        inputs.pop()
    assert_same("LayerNormalization", inputs, 3, 17, axis=axis, epsilon=eps, rtol=1e-4, atol=1e-4)


def test_layer_normalization_float16_and_broadcast_scale():
    rng = np.random.default_rng(0)
    x = _f32(rng, (2, 3, 8)).astype(np.float16)
    s = _f32(rng, (8,)).astype(np.float16)
    b = _f32(rng, (8,)).astype(np.float16)
    got = assert_same("LayerNormalization", [x, s, b], 3, 17, rtol=2e-3, atol=2e-3)
    assert got[0].dtype == np.float16 and got[1].dtype == np.float32
    # a scale that only broadcasts (numpy fallback path) over a 2-axis normalization
    x = _f32(rng, (2, 3, 4))
    assert_same("LayerNormalization", [x, _f32(rng, (1, 4)), _f32(rng, (4,))], 1, 17, axis=1, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(shapes, st.integers(0, 2**31))
def test_rms_normalization(shape, seed):
    rng = np.random.default_rng(seed)
    x = _f32(rng, shape, 2.0)
    assert_same("RMSNormalization", [x, _f32(rng, shape[-1:])], 1, 23, rtol=1e-4, atol=1e-5)
    assert_same("RMSNormalization", [x, _f32(rng, shape[1:])], 1, 23, axis=1, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(hnp.array_shapes(min_dims=2, max_dims=5, min_side=1, max_side=5), st.integers(0, 2**31))
def test_batch_normalization_inference(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = _f32(rng, shape)
    params = [_f32(rng, (c,)), _f32(rng, (c,)), _f32(rng, (c,)), np.abs(_f32(rng, (c,))) + 0.1]
    assert_same("BatchNormalization", [x, *params], 1, 9, rtol=1e-5, atol=1e-5)
    assert_same("BatchNormalization", [x, *params], 1, 15, epsilon=1e-3, rtol=1e-5, atol=1e-5)


def test_batch_normalization_training_mode():
    rng = np.random.default_rng(1)
    x = _f32(rng, (4, 3, 5, 2))
    params = [_f32(rng, (3,)), _f32(rng, (3,)), _f32(rng, (3,)), np.abs(_f32(rng, (3,))) + 0.1]
    assert_same("BatchNormalization", [x, *params], 3, 15, training_mode=1, momentum=0.8, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(hnp.array_shapes(min_dims=3, max_dims=5, min_side=1, max_side=5), st.integers(0, 2**31))
def test_instance_normalization(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = _f32(rng, shape, 2.0, 1.0)
    assert_same("InstanceNormalization", [x, _f32(rng, (c,)), _f32(rng, (c,))], 1, 6, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_normalization(opset, groups):
    rng = np.random.default_rng(groups)
    x = _f32(rng, (2, 4, 3, 5), 2.0)
    n = groups if opset == 18 else 4
    assert_same("GroupNormalization", [x, _f32(rng, (n,)), _f32(rng, (n,))], 1, opset, num_groups=groups, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    rng = np.random.default_rng(size)
    x = _f32(rng, (2, 6, 3, 4))
    assert_same("LRN", [x], 1, 13, size=size, alpha=0.01, beta=0.6, bias=1.5, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size_against_spec_loop(size):
    # onnxruntime only accepts odd sizes; check even windows against the spec's formula.
    rng = np.random.default_rng(size)
    x = _f32(rng, (2, 5, 3))
    want = np.empty_like(x)
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    for c in range(x.shape[1]):
        sq = np.sum(x[:, max(0, c - lo) : min(5, c + hi + 1)] ** 2, axis=1)
        want[:, c] = x[:, c] / (1.5 + 0.01 / size * sq) ** 0.6
    got = run_tuili("LRN", [x], 1, 13, size=size, alpha=0.01, beta=0.6, bias=1.5)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_lp_normalization(p, axis):
    rng = np.random.default_rng(p)
    x = _f32(rng, (3, 4, 5))
    x[0, 0, :] = 0  # zero norm rows give zeros, not NaN
    got = run_tuili("LpNormalization", [x], 1, 22, p=p, axis=axis)[0]
    assert np.all(np.isfinite(got))
    want = run_ort("LpNormalization", [x + (x == 0) * 0], 1, 13, p=p, axis=axis)[0]
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)


def test_mean_variance_normalization():
    rng = np.random.default_rng(2)
    x = _f32(rng, (2, 3, 4, 5), 3.0, 2.0)
    assert_same("MeanVarianceNormalization", [x], 1, 13, rtol=1e-4, atol=1e-5)
    assert_same("MeanVarianceNormalization", [x], 1, 13, axes=[1, 3], rtol=1e-4, atol=1e-5)


def test_dropout_inference_and_training():
    rng = np.random.default_rng(3)
    x = _f32(rng, (4, 50))
    # inference (all opsets): identity, all-true mask (bool from opset 10, x's type before)
    for opset in (7, 10, 12, 22):
        inputs = [x] if opset < 12 else [x, np.array(0.5, np.float32)]
        y, mask = run_tuili("Dropout", inputs, 2, opset)
        assert np.array_equal(y, x) and mask.all()
        assert mask.dtype == (np.bool_ if opset >= 10 else x.dtype)
    # training: kept values are scaled by 1/(1-ratio), dropped are 0, same seed -> same mask
    r, t = np.array(0.25, np.float32), np.array(True)
    y1, m1 = run_tuili("Dropout", [x, r, t], 2, 22, seed=7)
    y2, m2 = run_tuili("Dropout", [x, r, t], 2, 22, seed=7)
    assert np.array_equal(m1, m2) and np.array_equal(y1, y2)
    np.testing.assert_allclose(y1[m1], x[m1] / 0.75, rtol=1e-6)
    assert np.all(y1[~m1] == 0) and 0.5 < m1.mean() < 0.95
    # ratio 0 in training mode is the identity, as in onnxruntime
    want = run_ort("Dropout", [x, np.array(0.0, np.float32), t], 2, 13)
    got = run_tuili("Dropout", [x, np.array(0.0, np.float32), t], 2, 13)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
