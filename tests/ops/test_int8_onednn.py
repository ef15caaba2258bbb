"""oneDNN's int8 QLinearConv / QLinearMatMul (ops.int8) against tuili's exact integer kernels.

The integer sums are exact on a CPU with VNNI/AMX (the only place the runtime uses these kernels),
the requantization float32: outputs equal the float64 reference but where the rescaled value lies
within float32 rounding of a half-way point, and never more than one step away.
"""
from __future__ import annotations

import numpy as np
import pytest

from tuili.ops.conv import qlinear_conv
from tuili.ops.int8 import INT8_PREPARERS, int8_available
from tuili.ops.quant import qlinear_matmul
from tuili.ops.registry import NodeInfo
from tuili.runtime import cpu

pytestmark = pytest.mark.skipif(int8_available() is not None or cpu.exact_int8_dot() is None,
                                reason="oneDNN int8 kernels need torch with oneDNN and a CPU with VNNI/AMX")

U8, I8 = np.uint8, np.int8


def _info(op: str, inputs: list, const_from: int = 1, **attrs) -> NodeInfo:
    """NodeInfo with inputs[const_from:] constant (the activations come at run time)."""
    return NodeInfo(op, 13, op, tuple(True for _ in inputs),
                    tuple(None if i < const_from else np.asarray(a) for i, a in enumerate(inputs)),
                    tuple(np.shape(a) for a in inputs), tuple(np.asarray(a).dtype for a in inputs), attrs)


def _within_one_step(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape
    diff = np.abs(got.astype(np.int32) - ref.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def _conv_inputs(rng, n, c, h, m, k, group, per_channel, bias, x_zp=3):
    x = rng.integers(0, 256, (n, c, h, h)).astype(U8)
    w = rng.integers(-127, 128, (m, c // group, k, k)).astype(I8)
    ws = (rng.random(m) * 0.01 + 0.001).astype(np.float32) if per_channel else np.array(0.004, np.float32)
    inputs = [x, np.array(0.02, np.float32), np.array(x_zp, U8), w, ws,
              np.zeros(m if per_channel else (), I8), np.array(0.7, np.float32), np.array(10, U8)]
    if bias:
        inputs.append(rng.integers(-20000, 20000, m).astype(np.int32))
    return inputs


@pytest.mark.parametrize("case", [
    dict(n=2, c=16, h=9, m=8, k=3, group=1, per_channel=True, bias=True, pads=[1, 1, 1, 1], strides=[1, 1]),
    dict(n=1, c=16, h=10, m=16, k=3, group=16, per_channel=True, bias=False, pads=[1, 1, 1, 1], strides=[2, 2]),
    dict(n=3, c=8, h=5, m=12, k=1, group=1, per_channel=False, bias=True, pads=None, strides=None),
    dict(n=1, c=8, h=7, m=8, k=3, group=2, per_channel=True, bias=True, pads=[0, 0, 0, 0], strides=[1, 1]),
])
def test_qlinear_conv_matches_exact_kernel(case):
    rng = np.random.default_rng(0)
    pads, strides = case.pop("pads"), case.pop("strides")
    inputs = _conv_inputs(rng, **case)
    attrs = {k: v for k, v in dict(group=case["group"], pads=pads, strides=strides).items() if v is not None}
    kernel = INT8_PREPARERS[("", "QLinearConv")](_info("QLinearConv", inputs, **attrs))
    assert kernel is not None
    _within_one_step(kernel(*inputs, **attrs), qlinear_conv(*inputs, **attrs))
    other_batch = [np.concatenate([inputs[0]] * 2)] + inputs[1:]  # a batch the weights were not packed for
    _within_one_step(kernel(*other_batch, **attrs), qlinear_conv(*other_batch, **attrs))


def test_qlinear_conv_sums_do_not_saturate():
    """255 * 127 pairs: an int16-saturating u8s8 path gives 32767 per pair; the sums must be exact."""
    x = np.full((1, 4, 5, 5), 255, U8)
    w = np.full((2, 4, 3, 3), 127, I8)
    acc = 36 * 255 * 127
    inputs = [x, np.array(1.0, np.float32), np.array(0, U8), w, np.array(1.0, np.float32), np.array(0, I8),
              np.array(acc / 100.0, np.float32), np.array(100, U8)]
    kernel = INT8_PREPARERS[("", "QLinearConv")](_info("QLinearConv", inputs))
    np.testing.assert_array_equal(kernel(*inputs), np.full((1, 2, 3, 3), 200, U8))


@pytest.mark.parametrize("a_shape,per_column", [((16, 64), True), ((2, 5, 64), False)])
def test_qlinear_matmul_matches_exact_kernel(a_shape, per_column):
    rng = np.random.default_rng(1)
    n = 24
    a = rng.integers(0, 256, a_shape).astype(U8)
    w = rng.integers(-127, 128, (64, n)).astype(I8)
    ws = (rng.random(n) * 0.01 + 0.001).astype(np.float32) if per_column else np.array(0.005, np.float32)
    inputs = [a, np.array(0.02, np.float32), np.array(7, U8), w, ws, np.zeros(ws.shape, I8),
              np.array(0.9, np.float32), np.array(9, U8)]
    kernel = INT8_PREPARERS[("", "QLinearMatMul")](_info("QLinearMatMul", inputs))
    assert kernel is not None
    _within_one_step(kernel(*inputs), qlinear_matmul(*inputs))


def test_int8_activations_are_shifted_exactly():
    """int8 in and out (onnxruntime's default activations): the same sums on sign-flipped uint8."""
    rng = np.random.default_rng(5)
    inputs = _conv_inputs(rng, 2, 8, 6, 8, 3, 1, True, True)
    inputs[0], inputs[2], inputs[7] = (inputs[0] ^ np.uint8(0x80)).view(I8), np.array(-5, I8), np.array(-20, I8)
    kernel = INT8_PREPARERS[("", "QLinearConv")](_info("QLinearConv", inputs, pads=[1, 1, 1, 1]))
    _within_one_step(kernel(*inputs, pads=[1, 1, 1, 1]), qlinear_conv(*inputs, pads=[1, 1, 1, 1]))
    a = rng.integers(-128, 128, (4, 32)).astype(I8)
    mm = [a, np.array(0.02, np.float32), np.array(3, I8), rng.integers(-127, 128, (32, 8)).astype(I8),
          np.array(0.01, np.float32), np.array(0, I8), np.array(0.3, np.float32), np.array(-7, I8)]
    kernel = INT8_PREPARERS[("", "QLinearMatMul")](_info("QLinearMatMul", mm))
    _within_one_step(kernel(*mm), qlinear_matmul(*mm))


def test_what_onednn_cannot_run_keeps_the_exact_kernel():
    rng = np.random.default_rng(2)
    inputs = _conv_inputs(rng, 1, 4, 5, 4, 3, 1, True, False)
    prepare = INT8_PREPARERS[("", "QLinearConv")]
    nonzero_w_zp = inputs[:5] + [np.full(4, 1, I8)] + inputs[6:]
    assert prepare(_info("QLinearConv", nonzero_w_zp)) is None
    assert prepare(_info("QLinearConv", inputs, const_from=4)) is None  # the weight comes at run time
    assert prepare(_info("QLinearConv", inputs, pads=[0, 0, 1, 1])) is None  # asymmetric pads
    kernel = prepare(_info("QLinearConv", inputs))
    x16 = inputs[0].astype(np.uint16)  # not what was planned: the generic kernel takes it
    np.testing.assert_array_equal(kernel(x16, *inputs[1:]), qlinear_conv(x16, *inputs[1:]))
