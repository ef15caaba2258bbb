"""A few com.microsoft contrib ops that onnxruntime's graph optimizer writes into saved models."""
from __future__ import annotations

from onnx import TensorProto

from .nn import _conv, matmul_shape
from .registry import TensorType, broadcast_shapes, same, shape_rule

MS = "com.microsoft"


@shape_rule("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "QLinearSigmoid", "QLinearLeakyRelu", "BiasAdd",
            domain=MS)
def _same(ctx):
    return [same(ctx, 0)]


shape_rule("FusedConv", domain=MS)(_conv)


@shape_rule("FusedMatMul", domain=MS)
def _fused_matmul(ctx):
    a, b = ctx.shape(0), ctx.shape(1)
    if ctx.attr("transBatchA", 0) or ctx.attr("transBatchB", 0):
        return [TensorType(ctx.dtype(0), None)]
    if a is not None and ctx.attr("transA", 0) and len(a) >= 2:
        a = tuple(a[:-2]) + (a[-1], a[-2])
    if b is not None and ctx.attr("transB", 0) and len(b) >= 2:
        b = tuple(b[:-2]) + (b[-1], b[-2])
    return [TensorType(ctx.dtype(0), matmul_shape(a, b))]


@shape_rule("MatMulIntegerToFloat", domain=MS)
def _matmul_int_to_float(ctx):
    return [TensorType(ctx.dtype(2), matmul_shape(ctx.shape(0), ctx.shape(1)))]


@shape_rule("MatMulNBits", domain=MS)
def _matmul_nbits(ctx):
    a = ctx.shape(0)
    return [TensorType(ctx.dtype(0), None if a is None else tuple(a[:-1]) + (ctx.attr("N"),))]


@shape_rule("DynamicQuantizeMatMul", domain=MS)
def _dyn_quant_matmul(ctx):
    return [TensorType(ctx.dtype(0), matmul_shape(ctx.shape(0), ctx.shape(1)))]


@shape_rule("QLinearAdd", "QLinearMul", domain=MS)
def _qlinear_binary(ctx):
    return [TensorType(ctx.dtype(0), broadcast_shapes(ctx.shape(0), ctx.shape(3)))]


@shape_rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def _skip_layer_norm(ctx):
    x = ctx.shape(0)
    stats = None if x is None else tuple(x[:-1]) + (1,)
    outs = [same(ctx, 0), TensorType(TensorProto.FLOAT, stats), TensorType(TensorProto.FLOAT, stats), same(ctx, 0)]
    if ctx.op_type == "SkipSimplifiedLayerNormalization":
        outs = [outs[0], outs[2], outs[3]]
    return outs[: ctx.num_outputs]
