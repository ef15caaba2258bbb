"""bf16 kernels (ops.bf16): bf16 operands, float32 accumulation, float32 in and out.

bf16 keeps 8 significant bits: rounding moves a value by at most u = 2^-8 of itself. A product of
two rounded operands moves by at most ~2u, a float32 sum of K of them by at most 2u * sum|x_i w_i|,
and oneDNN rounds the result to bf16 once more (u * |y|) before it is cast back to float32: every
element is checked against that bound, computed from |x| and |w| with the float32 kernel."""
from __future__ import annotations

import numpy as np
import pytest

from tuili.ops import bf16
from tuili.ops.conv import conv
from tuili.ops.fused import fused_conv, fused_matmul
from tuili.ops.matmul import gemm, matmul
from tuili.ops.registry import NodeInfo
from tuili.runtime.precision import native_bf16

pytestmark = pytest.mark.skipif(native_bf16() is None, reason="this CPU has no native bf16 (AVX512_BF16/AMX)")

U = 2.0**-8  # bf16's unit roundoff


def info(op_type, inputs, attrs=None, const=(1, 2), opset=17):
    return NodeInfo(op_type, opset, "n", given=tuple(i is not None for i in inputs),
                    consts=tuple(v if k in const else None for k, v in enumerate(inputs)),
                    shapes=tuple(None if v is None else v.shape for v in inputs),
                    dtypes=tuple(None if v is None else v.dtype for v in inputs), attrs=dict(attrs or {}))


def check(got, want, bound):
    assert got.dtype == np.float32 and got.shape == want.shape
    limit = 2 * U * bound + U * np.abs(want) + 1e-5
    assert np.all(np.abs(got - want) <= limit), float(np.max(np.abs(got - want) - limit))


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("group, stride", [(1, 1), (1, 2), (8, 1)])
def test_conv_within_the_bf16_bound(group, stride):
    rng = np.random.default_rng(group + stride)
    x, w, b = rand(rng, 2, 8, 9, 9), rand(rng, 16, 8 // group, 3, 3), rand(rng, 16)
    attrs = {"pads": [1, 1, 1, 1], "strides": [stride, stride], "group": group}
    kernel = bf16.BF16_PREPARERS[("", "Conv")](info("Conv", [x, w, b], attrs))
    assert kernel is not None
    got = kernel(x, w, b, **attrs)
    want = conv(x, w, b, **attrs)
    bound = conv(np.abs(x), np.abs(w), None, **attrs) + np.abs(b)[:, None, None]
    check(np.ascontiguousarray(got), want, bound)
    assert not np.array_equal(got, want)  # it did run in bf16


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid", ""])
def test_fused_conv_with_residual(activation):
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 1, 4, 6, 6), rand(rng, 8, 4, 3, 3), rand(rng, 8)
    z = rand(rng, 1, 8, 6, 6)
    attrs = {"pads": [1, 1, 1, 1], "activation": activation}
    kernel = bf16.BF16_PREPARERS[("tuili", "FusedConv")](info("FusedConv", [x, w, b, z], attrs))
    want = fused_conv(x, w, b, z, **attrs)
    got = kernel(x, w, b, z, **attrs)
    pre = conv(np.abs(x), np.abs(w), None, pads=[1, 1, 1, 1]) + np.abs(b)[:, None, None] + np.abs(z)
    check(np.ascontiguousarray(got), want, pre)  # the activations here are 1-Lipschitz


def test_matmul_any_leading_dims_and_fallback():
    rng = np.random.default_rng(2)
    a, w = rand(rng, 2, 5, 64), rand(rng, 64, 24)
    kernel = bf16.BF16_PREPARERS[("", "MatMul")](info("MatMul", [a, w], const=(1,)))
    check(kernel(a, w), matmul(a, w), matmul(np.abs(a), np.abs(w)))
    a1 = rand(rng, 64)  # a 1-D operand is one row
    check(kernel(a1, w), matmul(a1, w), matmul(np.abs(a1), np.abs(w)))


def test_gemm_trans_b_and_bias_row():
    rng = np.random.default_rng(3)
    x, b, c = rand(rng, 4, 32), rand(rng, 10, 32), rand(rng, 1, 10)
    attrs = {"transB": 1}
    kernel = bf16.BF16_PREPARERS[("", "Gemm")](info("Gemm", [x, b, c], attrs))
    check(kernel(x, b, c, **attrs), gemm(x, b, c, **attrs), np.abs(x) @ np.abs(b).T + np.abs(c))


def test_gemm_it_cannot_take_stays_float32():
    rng = np.random.default_rng(4)
    x, b = rand(rng, 4, 32), rand(rng, 32, 10)
    assert bf16.BF16_PREPARERS[("", "Gemm")](info("Gemm", [x, b, None], {"alpha": 2.0})) is None
    assert bf16.BF16_PREPARERS[("", "Gemm")](info("Gemm", [x, b, None], {"transA": 1})) is None
    assert bf16.BF16_PREPARERS[("", "MatMul")](info("MatMul", [x, b], const=())) is None  # weight computed at run time


@pytest.mark.parametrize("activation, params", [("Relu", None), ("LeakyRelu", [0.1])])
def test_fused_matmul_activation_fused_or_after(activation, params):
    rng = np.random.default_rng(5)
    a, w, bias = rand(rng, 3, 7, 16), rand(rng, 16, 12), rand(rng, 12)
    attrs = {"activation": activation, "activation_params": params}
    kernel = bf16.BF16_PREPARERS[("tuili", "FusedMatMul")](info("FusedMatMul", [a, w, bias], attrs))
    check(kernel(a, w, bias, **attrs), fused_matmul(a, w, bias, **attrs),
          matmul(np.abs(a), np.abs(w)) + np.abs(bias))
