"""Elementwise kernels against onnxruntime (property tests) plus the ONNX rules that are easy to
get wrong with numpy: integer Div truncation, Mod sign rules, Pow dtype, Round half-to-even,
BitShift edge cases, legacy (opset < 7) broadcasting, Clip by opset."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.ops._ortref import assert_same
from tuili.ops.registry import get_kernel

SETTINGS = settings(max_examples=30, deadline=None)


def _tuili(op, inputs, opset, **attrs):
    return get_kernel(op, "", opset).fn(*inputs, **attrs)


_check = partial(assert_same, opset=17, rtol=1e-5, atol=1e-6)


shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)
f32 = st.floats(-100, 100, width=32)


@st.composite
def broadcast_pair(draw, dtype=np.float32, elements=f32):
    a_shape, b_shape = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4)).input_shapes
    a = draw(hnp.arrays(dtype, a_shape, elements=elements))
    b = draw(hnp.arrays(dtype, b_shape, elements=elements))
    return a, b


@SETTINGS
@given(broadcast_pair(), st.sampled_from(["Add", "Sub", "Mul", "Max", "Min", "Greater", "LessOrEqual", "Equal"]))
def test_binary_float_vs_ort(pair, op):
    _check(op, list(pair))


ints = st.integers(-1000, 1000)


@SETTINGS
@given(broadcast_pair(np.int32, ints), st.sampled_from(["Add", "Sub", "Mul", "Div", "Mod"]))
def test_binary_int32_vs_ort(pair, op):
    a, b = pair
    if op in ("Div", "Mod"):
        b = np.where(b == 0, 7, b).astype(np.int32)
    _check(op, [a, b])


@SETTINGS
@given(broadcast_pair())
def test_fmod_float_vs_ort(pair):
    a, b = pair
    b = np.where(b == 0, 1.5, b).astype(np.float32)
    _check("Mod", [a, b], fmod=1)


@SETTINGS
@given(hnp.arrays(np.float32, shapes, elements=st.floats(-3, 3, width=32)),
       st.sampled_from(["Abs", "Neg", "Exp", "Tanh", "Sin", "Cos", "Atan", "Asinh", "Erf", "Floor", "Ceil",
                        "Round", "Sign", "Sigmoid", "Reciprocal"]))
def test_unary_vs_ort(x, op):
    if op == "Reciprocal":
        x = np.where(x == 0, 1, x).astype(np.float32)
    _check(op, [x], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(hnp.arrays(np.float32, st.integers(256, 2000), elements=st.floats(-6, 6, width=32)))
def test_erf_fast_path_accuracy(x):
    # the float32 erf is our own approximation: check it against ORT's on large arrays
    _check("Erf", [x], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(hnp.arrays(np.float32, shapes, elements=f32), st.floats(-10, 10, width=32), st.floats(-10, 10, width=32))
def test_clip_vs_ort(x, lo, hi):
    _check("Clip", [x, np.float32(lo), np.float32(hi)], opset=13)
    _check("Clip", [x, None, np.float32(hi)], opset=13)
    _check("Clip", [x, np.float32(lo)], opset=13)


@SETTINGS
@given(st.lists(hnp.arrays(np.float32, st.sampled_from([(3, 1), (1, 4), (3, 4), (4,)]), elements=f32),
                min_size=1, max_size=4), st.sampled_from(["Sum", "Mean", "Max", "Min"]))
def test_variadic_broadcast_vs_ort(arrays, op):
    _check(op, arrays, rtol=1e-5, atol=1e-4)


def test_int_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 0], np.int64)
    b = np.array([2, 2, -2, -2, 3], np.int64)
    np.testing.assert_array_equal(_tuili("Div", [a, b], 14), [3, -3, -3, 3, 0])
    assert _tuili("Div", [a, b], 14).dtype == np.int64


def test_mod_sign_rules():
    a = np.array([-4, 7, 5, 4, -7, 8], np.int32)
    b = np.array([2, -3, 8, -2, 3, 5], np.int32)
    np.testing.assert_array_equal(_tuili("Mod", [a, b], 13), np.mod(a, b))  # sign of divisor
    np.testing.assert_array_equal(_tuili("Mod", [a, b], 13, fmod=1), np.fmod(a, b))  # sign of dividend
    assert _tuili("Mod", [a, b], 13).dtype == np.int32


def test_pow_output_has_base_dtype():
    x = np.array([1, 2, 3], np.int32)
    assert _tuili("Pow", [x, np.array([2.0, 0.5, 1.0], np.float32)], 15).dtype == np.int32
    y = _tuili("Pow", [np.array([1.5, 2.0], np.float32), np.array(2, np.int64)], 15)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [2.25, 4.0])
    _check("Pow", [np.array([1.5, 2.0, 3.0], np.float32), np.array([2.0, -1.0, 0.5], np.float32)], opset=15)


def test_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6], np.float32)
    np.testing.assert_array_equal(_tuili("Round", [x], 22), [0, 2, 2, -0.0, -2, 2, 3])


def test_bitshift_edges():
    x = np.array([-8, 4, -1, 64], np.int8)
    s = np.array([8, 9, -1, 1], np.int8)
    np.testing.assert_array_equal(_tuili("BitShift", [x, s], 28, direction="RIGHT"), [-1, 0, -1, 32])
    np.testing.assert_array_equal(_tuili("BitShift", [x, s], 28, direction="LEFT"), [0, 0, 0, -128])
    u = np.array([16, 4, 1], np.uint8)
    _check("BitShift", [u, np.array([1, 2, 3], np.uint8)], opset=11, direction="LEFT")
    _check("BitShift", [u, np.array([1, 2, 3], np.uint8)], opset=11, direction="RIGHT")


def test_legacy_broadcast_axis():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = np.array([10, 20, 30], np.float32)
    y = _tuili("Add", [a, b], 6, broadcast=1, axis=1)
    np.testing.assert_array_equal(y, a + b.reshape(1, 3, 1))
    y = _tuili("Mul", [a, np.arange(4, dtype=np.float32)], 6, broadcast=1)
    np.testing.assert_array_equal(y, a * np.arange(4, dtype=np.float32))


def test_clip_attributes_before_opset_11():
    x = np.array([-3, 0.5, 9], np.float32)
    np.testing.assert_array_equal(_tuili("Clip", [x], 6, min=-1.0, max=1.0), [-1, 0.5, 1])
    np.testing.assert_array_equal(_tuili("Clip", [x], 6, max=1.0), [-3, 0.5, 1])
    xi = np.array([-300, 5, 300], np.int32)
    np.testing.assert_array_equal(_tuili("Clip", [xi, np.int32(-10), np.int32(10)], 13), [-10, 5, 10])


def test_zero_dim_inputs_give_arrays():
    y = _tuili("Add", [np.array(1.0, np.float32), np.array(2.0, np.float32)], 14)
    assert isinstance(y, np.ndarray) and y.shape == () and y.dtype == np.float32
    y = _tuili("Greater", [np.array(1.0, np.float32), np.array(2.0, np.float32)], 13)
    assert isinstance(y, np.ndarray) and y.dtype == np.bool_


def test_inputs_not_mutated():
    a = np.array([1.0, -2.0], np.float32)
    keep = a.copy()
    for op in ("Relu", "Abs", "Neg", "Sigmoid"):
        get_kernel(op, "", 14).fn(a)
    _tuili("Sum", [a, a, a], 13)
    _tuili("Max", [a, a, a], 13)
    np.testing.assert_array_equal(a, keep)


@pytest.mark.parametrize("op", ["Equal", "Less", "GreaterOrEqual"])
def test_bfloat16_comparisons(op):
    import ml_dtypes

    a = np.array([1, 2, 3], ml_dtypes.bfloat16)
    b = np.array([2, 2, 2], ml_dtypes.bfloat16)
    ref = {"Equal": [False, True, False], "Less": [True, False, False], "GreaterOrEqual": [False, True, True]}[op]
    np.testing.assert_array_equal(_tuili(op, [a, b], 19), ref)
