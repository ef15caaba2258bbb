"""Graph preparation before quantization, with tuili's own passes.

The model is loaded (the file is only read), its default-domain opset raised to 13 when lower
(per-channel DequantizeLinear needs the ``axis`` attribute of opset 13; blocked int4 DequantizeLinear
needs opset 21; onnx's version converter does the upgrade), shapes inferred, and tuili's O2 pipeline for portable output run: Constant nodes
and constant subgraphs folded into initializers, no-ops and dead nodes removed, BatchNormalization
and constant Mul/Add folded into Conv, MatMul + Add fused into Gemm with its weights pre-transposed.
No tuili-domain op is created, so the quantized model runs in onnxruntime.
"""
from __future__ import annotations

import logging
import os

import onnx

from tuili.errors import ModelLoadError
from tuili.ir import Graph, from_model_proto, infer_shapes, load
from tuili.passes import Report, copy_graph, optimize

log = logging.getLogger(__name__)

MIN_OPSET = 13  # DequantizeLinear's per-channel axis
FOUR_BIT_OPSET = 21  # int4 / uint4 QuantizeLinear and DequantizeLinear


def load_model(model) -> Graph:
    """A private copy of ``model`` (a path, bytes, a ModelProto or a Graph) as a tuili Graph."""
    if isinstance(model, Graph):
        return copy_graph(model)
    if isinstance(model, str | os.PathLike) and not os.path.exists(model):
        raise ModelLoadError(f"model {str(model)!r} does not exist")
    return load(model)


def prepare(model, level: int = 2, min_opset: int = MIN_OPSET) -> tuple[Graph, Report | None]:
    """The float model ready to quantize (at opset ``min_opset`` or above), and the optimizer's report."""
    graph = load_model(model)
    opset = graph.opset("")
    if opset < min_opset:
        graph = _upgrade(graph, opset, min_opset)
    infer_shapes(graph)
    report = optimize(graph, level, allow_custom_ops=False) if level else None
    infer_shapes(graph)
    return graph, report


def _upgrade(graph: Graph, opset: int, target: int) -> Graph:
    from onnx import version_converter

    try:
        proto = version_converter.convert_version(graph.to_proto(), target)
    except Exception as e:  # the converter raises bare RuntimeErrors naming the adapter it lacks
        raise ModelLoadError(f"model has opset {opset}; its quantization needs opset {target} and onnx's "
                             f"version converter could not upgrade it: {e}. Re-export the model at opset "
                             f">= {target}") from e
    log.info("upgraded the model from opset %d to %d for DequantizeLinear's axis/block_size", opset, target)
    out = from_model_proto(proto)
    out.source_dir = graph.source_dir
    return out


def model_size(model) -> int:
    """Bytes of the serialized model (a path's file size, or a Graph's protobuf)."""
    if isinstance(model, str | os.PathLike):
        return os.path.getsize(model)
    if isinstance(model, Graph):
        return model.to_proto().ByteSize()
    if isinstance(model, onnx.ModelProto):
        return model.ByteSize()
    return len(model)
