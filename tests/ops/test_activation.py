"""Activation kernels against onnxruntime, including the opset < 13 coerce-to-2D semantics of
Softmax / LogSoftmax / Hardmax and Gelu's tanh approximation."""
from __future__ import annotations

from functools import partial

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.ops._ortref import assert_same, run_ort
from tuili.ops.registry import get_kernel

SETTINGS = settings(max_examples=30, deadline=None)


_check = partial(assert_same, rtol=1e-5, atol=1e-6)


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
xs = hnp.arrays(np.float32, shapes, elements=st.floats(-8, 8, width=32))

SIMPLE = [
    ("Relu", {}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 1.3}), ("LeakyRelu", {"alpha": 0.1}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}), ("Softplus", {}), ("Softsign", {}),
    ("ThresholdedRelu", {"alpha": 0.5}), ("Shrink", {"lambd": 1.0, "bias": 0.3}), ("Mish", {}), ("Sigmoid", {}),
    ("Gelu", {}), ("Gelu", {"approximate": "tanh"}),
]


@SETTINGS
@given(xs, st.sampled_from(SIMPLE))
def test_pointwise_vs_ort(x, op_attrs):
    op, attrs = op_attrs
    _check(op, [x], opset=20, **attrs)


@SETTINGS
@given(xs, st.data())
def test_prelu_broadcast_vs_ort(x, data):
    slope_shape = data.draw(st.sampled_from([(1,), x.shape[-1:], x.shape]))
    slope = data.draw(hnp.arrays(np.float32, slope_shape, elements=st.floats(-2, 2, width=32)))
    _check("PRelu", [x, slope], opset=16)


@SETTINGS
@given(xs, st.sampled_from(["Softmax", "LogSoftmax", "Hardmax"]), st.sampled_from([11, 13]), st.data())
def test_softmax_family_vs_ort(x, op, opset, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    _check(op, [x], opset=opset, rtol=1e-5, atol=1e-5, axis=axis)


def test_softmax_default_axis_changes_at_13():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    old = get_kernel("Softmax", "", 11).fn(x)  # axis=1, coerced to [2, 12]
    new = get_kernel("Softmax", "", 13).fn(x)  # axis=-1
    np.testing.assert_allclose(old.reshape(2, 12).sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(new.sum(axis=-1), 1, rtol=1e-6)
    np.testing.assert_allclose(old, run_ort("Softmax", [x], opset=11)[0], rtol=1e-6)


def test_sigmoid_tails_are_accurate():
    x = np.array([-80, -30, -20, 0, 20, 100], np.float32)
    y = get_kernel("Sigmoid", "", 13).fn(x)
    ref = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=0)  # relative accuracy even at 1e-35
    # below float32's normal range the result flushes to (at most a denormal away from) zero
    assert get_kernel("Sigmoid", "", 13).fn(np.array([-100], np.float32))[0] < 1e-37


def test_float16_stays_float16():
    x = np.linspace(-3, 3, 11).astype(np.float16)
    for op in ("Relu", "Sigmoid", "Gelu", "Softmax", "HardSwish", "Elu"):
        assert get_kernel(op, "", 22).fn(x).dtype == np.float16, op


def test_hardmax_picks_first_maximum():
    x = np.array([[1, 3, 3, 0]], np.float32)
    np.testing.assert_array_equal(get_kernel("Hardmax", "", 13).fn(x), [[0, 1, 0, 0]])


def test_prelu_legacy_per_channel_slope():
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    y = get_kernel("PRelu", "", 6).fn(x, slope)
    np.testing.assert_allclose(y, np.where(x >= 0, x, x * slope.reshape(3, 1, 1)))
