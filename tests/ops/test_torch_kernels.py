"""The float32 kernels the planner moves onto torch (one thread pool per run, see docs/engine.md):
each prepared kernel gives what the generic numpy kernel gives, falls back to it for inputs it was
not planned for, and the absorbing ones refuse what they cannot compute."""
from __future__ import annotations

import numpy as np
import pytest

from tuili.errors import KernelError, ShapeInferenceError
from tuili.ops.activation import gelu
from tuili.ops.attention import fused_attention
from tuili.ops.conv import conv
from tuili.ops.fused import fused_conv, fused_matmul
from tuili.ops.matmul import gemm, matmul
from tuili.ops.norm import layer_normalization
from tuili.ops.pool import average_pool, max_pool
from tuili.ops.registry import KernelContext, NodeInfo, preparer

torch = pytest.importorskip("torch")

TOL = {"rtol": 1e-5, "atol": 1e-5}


def info(op_type, inputs, attrs=None, const=(1, 2)):
    return NodeInfo(op_type, 17, "n", given=tuple(i is not None for i in inputs),
                    consts=tuple(v if k in const else None for k, v in enumerate(inputs)),
                    shapes=tuple(None if v is None else v.shape for v in inputs),
                    dtypes=tuple(None if v is None else v.dtype for v in inputs), attrs=dict(attrs or {}))


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def ctx(op, outputs=1):
    return KernelContext(op, 17, "n", outputs)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "dilations": [2, 2]},
])
def test_max_pool_on_torch(attrs):
    x = rand(np.random.default_rng(0), 2, 5, 11, 11)
    kernel = preparer(max_pool)(info("MaxPool", [x], attrs, const=()))
    assert kernel is not None and kernel.__name__ == "pool_on_torch"
    np.testing.assert_array_equal(kernel(ctx("MaxPool"), x, **attrs), max_pool(ctx("MaxPool"), x, **attrs))
    # the Indices output is not torch's: the generic kernel computes both
    got = kernel(ctx("MaxPool", 2), x, **attrs)
    want = max_pool(ctx("MaxPool", 2), x, **attrs)
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1, "strides": [2, 2]},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
])
def test_average_pool_on_torch(attrs):
    x = rand(np.random.default_rng(1), 1, 4, 9, 9)
    kernel = preparer(average_pool)(info("AveragePool", [x], attrs, const=()))
    assert kernel is not None
    np.testing.assert_allclose(kernel(x, **attrs), average_pool(x, **attrs), **TOL)


def test_pools_torch_cannot_match_stay_numpy():
    x = rand(np.random.default_rng(2), 1, 2, 8, 8)
    for attrs in ({"kernel_shape": [3, 3], "pads": [0, 0, 1, 1]},  # asymmetric
                  {"kernel_shape": [2, 2], "pads": [2, 2, 2, 2]},  # pad over half the window
                  {"kernel_shape": [3, 3], "dilations": [2, 2]}):  # dilated average
        assert preparer(average_pool)(info("AveragePool", [x], attrs, const=())) is None
    assert preparer(max_pool)(info("MaxPool", [x.astype(np.float64)], {"kernel_shape": [2, 2]}, const=())) is None


@pytest.mark.parametrize("shape", [(3, 64), (2, 7, 64)])
def test_matmul_with_a_constant_weight_on_onednn(shape):
    rng = np.random.default_rng(3)
    a, w = rand(rng, *shape), rand(rng, 64, 96)
    kernel = preparer(matmul)(info("MatMul", [a, w], const=(1,)))
    assert kernel.__name__ == "matmul_onednn" and kernel.absorbs == (1,)
    np.testing.assert_allclose(kernel(a, w), matmul(a, w), **TOL)
    a1 = rand(rng, 64)  # a 1-D operand at run time is one row
    np.testing.assert_allclose(kernel(a1, w), matmul(a1, w), **TOL)
    with pytest.raises((KernelError, ValueError)):  # a width it was not packed for: the generic kernel's error
        kernel(rand(rng, 3, 63), w)
    small = rand(rng, 64, 8)  # too small for oneDNN's call overhead to pay: numpy
    assert preparer(matmul)(info("MatMul", [a, small], const=(1,))) is None


def test_matmul_of_two_run_time_operands_on_torch():
    rng = np.random.default_rng(4)
    q, k = rand(rng, 2, 4, 32, 16), rand(rng, 2, 4, 16, 32)
    kernel = preparer(matmul)(info("MatMul", [q, k], const=()))
    assert kernel.__name__ == "matmul_torch"
    np.testing.assert_allclose(kernel(q, k), matmul(q, k), **TOL)
    small = rand(rng, 2, 3), rand(rng, 3, 2)  # below the size where torch pays: numpy
    np.testing.assert_array_equal(kernel(*small), matmul(*small))
    ints = np.arange(6, dtype=np.int32).reshape(2, 3), np.arange(6, dtype=np.int32).reshape(3, 2)
    np.testing.assert_array_equal(kernel(*ints), matmul(*ints))


def test_gemm_and_fused_matmul_on_onednn():
    rng = np.random.default_rng(5)
    x, b, c = rand(rng, 4, 128), rand(rng, 96, 128), rand(rng, 96)
    attrs = {"transB": 1}
    kernel = preparer(gemm)(info("Gemm", [x, b, c], attrs))
    assert kernel.absorbs == (1, 2)
    np.testing.assert_allclose(kernel(x, b, c, **attrs), gemm(x, b, c, **attrs), **TOL)
    w = rand(rng, 128, 96)
    fattrs = {"activation": "Relu"}
    fused = preparer(fused_matmul)(info("FusedMatMul", [x, w, c], fattrs))
    np.testing.assert_allclose(fused(x, w, c, **fattrs), fused_matmul(x, w, c, **fattrs), **TOL)


def test_fused_conv_with_a_broadcast_addend_computes_without_the_weight():
    """The kernel holds the packed weight only: an addend oneDNN cannot fuse is added after."""
    rng = np.random.default_rng(6)
    x, w, b = rand(rng, 1, 8, 6, 6), rand(rng, 8, 8, 3, 3), rand(rng, 8)
    z = rand(rng, 1, 8, 1, 1)
    attrs = {"pads": [1, 1, 1, 1], "activation": "Relu"}
    kernel = preparer(fused_conv)(info("FusedConv", [x, w, b, z], attrs))
    assert kernel.absorbs == (1, 2)
    stand_in = np.broadcast_to(np.zeros((), np.float32), w.shape)  # what the plan passes instead of w
    np.testing.assert_allclose(kernel(x, stand_in, b, z, **attrs), fused_conv(x, w, b, z, **attrs), rtol=1e-4,
                               atol=1e-4)


def test_an_absorbing_kernel_refuses_input_the_generic_kernel_would_compute_wrongly():
    rng = np.random.default_rng(7)
    x, w = rand(rng, 1, 4, 5, 5), rand(rng, 4, 4, 3, 3)
    kernel = preparer(conv)(info("Conv", [x, w, None]))
    stand_in = np.broadcast_to(np.zeros((), np.float32), w.shape)
    with pytest.raises(KernelError, match="planned for"):  # float64 would run on the stand-in's zeros
        kernel(x.astype(np.float64), stand_in)
    with pytest.raises(ShapeInferenceError, match="input channels 3"):  # the generic kernel's own message
        kernel(rand(rng, 1, 3, 5, 5), stand_in)


def test_layer_norm_gelu_and_attention_on_torch():
    rng = np.random.default_rng(8)
    x, scale, bias = rand(rng, 2, 5, 32), rand(rng, 32), rand(rng, 32)
    kernel = preparer(layer_normalization)(info("LayerNormalization", [x, scale, bias], {"epsilon": 1e-5}))
    assert kernel.__name__ == "layer_norm_torch"
    np.testing.assert_allclose(kernel(ctx("LayerNormalization"), x, scale, bias, epsilon=1e-5),
                               layer_normalization(ctx("LayerNormalization"), x, scale, bias, epsilon=1e-5), **TOL)
    # Mean and InvStdDev outputs come from the generic kernel
    got = kernel(ctx("LayerNormalization", 3), x, scale, bias, epsilon=1e-5)
    assert len(got) == 3
    for approximate in ("none", "tanh"):
        g = preparer(gelu)(info("Gelu", [x], {"approximate": approximate}, const=()))
        np.testing.assert_allclose(g(x, approximate=approximate), gelu(x, approximate=approximate), **TOL)
    q, kt, v = rand(rng, 1, 2, 8, 4), rand(rng, 1, 2, 4, 8), rand(rng, 1, 2, 8, 4)
    mask = np.where(rng.random((1, 1, 1, 8)) < 0.3, -1e4, 0).astype(np.float32)
    want = _attention_numpy(q, kt, v, mask, 0.5)
    np.testing.assert_allclose(fused_attention(q, kt, v, mask, scale=0.5), want, **TOL)


def _attention_numpy(q, kt, v, bias, scale):
    s = np.matmul(q, kt) * scale + bias
    s = np.exp(s - s.max(-1, keepdims=True))
    return np.matmul(s / s.sum(-1, keepdims=True), v)


def test_a_convolution_packs_its_weight_per_input_shape():
    """oneDNN's layout depends on the input shape: each new shape gets its own packing (made from the
    packed copy itself), up to MAX_PACKED_SHAPES; results never change."""
    from tuili.ops import _torch

    rng = np.random.default_rng(9)
    w, b = rand(rng, 16, 8, 1, 1), rand(rng, 16)
    kernel = preparer(conv)(info("Conv", [rand(rng, 1, 8, 7, 7), w, b]))
    packed = next(c.cell_contents for c in kernel.__closure__ if isinstance(c.cell_contents, _torch.PackedConv2d))
    for n in range(1, _torch.MAX_PACKED_SHAPES + 3):
        x = rand(rng, n, 8, 7, 7)
        np.testing.assert_allclose(kernel(x, w, b), conv(x, w, b), **TOL)
    assert len(packed.by_shape) == _torch.MAX_PACKED_SHAPES and packed.generic is None
