"""tuili's integer kernels sum u8*s8 products exactly on every CPU (issue #19).

Without VNNI, onnxruntime's u8s8 kernels add each pair of products into a saturating int16: for
a = [255, 255] and b = [127, 127] it returns 32767 where the exact dot product is 64770. These
inputs are the worst case for that path; tuili must give the exact sums here whatever the CPU
(and whatever TUILI_CPU_MASK hides), through the kernels and through a planned session.
"""
from __future__ import annotations

import numpy as np
import pytest

import tuili
from tests.ops._intref import assert_exact
from tests.ops._ortref import make_model, run_tuili

A = np.full((2, 8), 255, np.uint8)
EXTREMES = [np.int8(127), np.int8(-128)]


@pytest.mark.parametrize("w", EXTREMES)
def test_matmul_integer_saturating_pairs(w):
    b = np.full((8, 3), w, np.int8)
    (y,) = run_tuili("MatMulInteger", [A, b], opset=10)
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, np.full((2, 3), 8 * 255 * int(w), np.int32))  # 259080 or -261120
    assert_exact("MatMulInteger", [A, b], opset=10, weights=b)


def test_matmul_integer_pair_the_issue_names():
    (y,) = run_tuili("MatMulInteger", [np.array([[255, 255]], np.uint8), np.array([[127], [127]], np.int8)], opset=10)
    assert int(y[0, 0]) == 64770  # onnxruntime without VNNI: 32767


@pytest.mark.parametrize("w", EXTREMES)
def test_conv_integer_and_qlinear_conv_saturating(w):
    x = np.full((1, 4, 5, 5), 255, np.uint8)
    wt = np.full((2, 4, 3, 3), w, np.int8)
    (y,) = run_tuili("ConvInteger", [x, wt], opset=10)
    np.testing.assert_array_equal(y, np.full((1, 2, 3, 3), 36 * 255 * int(w), np.int32))
    assert_exact("ConvInteger", [x, wt], opset=10, weights=wt)
    # requantized: scale chosen so the exact accumulator maps inside uint8, a saturated one would not
    acc = 36 * 255 * int(w)
    y_scale = np.float32(abs(acc) / 100.0)
    inputs = [x, np.array(1.0, np.float32), np.array(0, np.uint8), wt, np.array(1.0, np.float32), np.array(0, np.int8),
              np.array(y_scale), np.array(128, np.uint8)]
    (q,) = run_tuili("QLinearConv", inputs, opset=10)
    assert np.all(q == np.uint8(128 + np.sign(acc) * 100))
    assert_exact("QLinearConv", inputs, opset=10, weights=wt, atol=1)


def test_qlinear_matmul_saturating():
    b = np.full((8, 3), 127, np.int8)
    inputs = [A, np.array(1.0, np.float32), np.array(0, np.uint8), b, np.array(1.0, np.float32), np.array(0, np.int8),
              np.array(8 * 255 * 127 / 100.0, np.float32), np.array(0, np.uint8)]
    (q,) = run_tuili("QLinearMatMul", inputs, opset=10)
    np.testing.assert_array_equal(q, np.full((2, 3), 100, np.uint8))
    assert_exact("QLinearMatMul", inputs, opset=10, weights=b, atol=1)


def test_planned_session_is_exact_too():
    b = np.full((8, 3), 127, np.int8)
    model, _ = make_model("MatMulInteger", [A, b], opset=10)
    (y,) = tuili.InferenceSession(model.SerializeToString()).run(None, {"in0": A, "in1": b})
    np.testing.assert_array_equal(y, np.full((2, 3), 8 * 255 * 127, np.int32))
