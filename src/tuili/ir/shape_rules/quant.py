"""Quantization ops: the output element type follows the zero point (or ``output_dtype``)."""
from __future__ import annotations

from onnx import TensorProto

from .registry import TensorType, shape_rule


@shape_rule("QuantizeLinear")
def _quantize(ctx):
    dtype = ctx.attr("output_dtype", 0) or None
    if dtype is None:
        dtype = ctx.dtype(2) if ctx.has_input(2) else TensorProto.UINT8
    return [TensorType(dtype, ctx.shape(0))]


@shape_rule("DequantizeLinear")
def _dequantize(ctx):
    dtype = ctx.attr("output_dtype", 0) or None
    if dtype is None:
        dtype = ctx.dtype(1) if ctx.opset >= 19 else TensorProto.FLOAT
    return [TensorType(dtype, ctx.shape(0))]


@shape_rule("DynamicQuantizeLinear")
def _dyn_quantize(ctx):
    return [TensorType(TensorProto.UINT8, ctx.shape(0)), TensorType(TensorProto.FLOAT, ()),
            TensorType(TensorProto.UINT8, ())]
