"""int4 weight-only quantization of MatMul/Gemm: 4-bit weights per block along K, float activations.

    report = quantize_int4("gpt.onnx", "gpt.int4.onnx", block_size=128, fmt="dq")
    report = quantize_int4("gpt.onnx", "gpt.int4.onnx", calib=reader, method="gptq")

Two formats for each MatMul/Gemm with a constant 2-D weight:
  dq     ONNX opset 21: the weight is an INT4 (symmetric) or UINT4 (with zero points) initializer in its
         own layout behind DequantizeLinear(axis=K, block_size); any ONNX engine runs it, tuili's
         included, and onnxruntime fuses DequantizeLinear -> MatMul into its MatMulNBits kernel
         (computing with int8 activations, its accuracy_level 4).
  nbits  com.microsoft MatMulNBits (bits=4): codes packed [N, blocks, block_size/2], scales [N, blocks],
         zero points packed [N, ceil(blocks/2)]; onnxruntime and tuili's engine (ops/matmul.py) run it.
Rounding: ``rtn`` (round to nearest) or ``gptq`` (error-compensating, needs calibration data; see gptq).
The report gives the bytes of the quantized weights before and after.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

import ml_dtypes
import numpy as np

from tuili.errors import ConfigError
from tuili.ir import Graph, Node, infer_shapes
from tuili.passes.base import const_of

from .blocks import SYMMETRIC_ZERO, BlockWeights, blocks_of, check_block_size, pack_int4, quantize_blocks
from .calibrate import DEFAULT_BATCH, collect, model_inputs, reader_for
from .dynamic import DYNAMIC_OPS, _why_float, gemm_bias
from .gptq import DEFAULT_DAMP, HessianObserver, gptq_blocks
from .prepare import model_size, prepare
from .ptq import _label, check_paths
from .qdq import drop_unused_initializers, fresh_name
from .report import FloatNode, Report

log = logging.getLogger(__name__)

FORMATS = ("dq", "nbits")
METHODS = ("rtn", "gptq")
DQ_OPSET = 21  # int4 types and DequantizeLinear's block_size
DEFAULT_BLOCK = 128


def weight_kn(node: Node) -> np.ndarray:
    """The node's weight as [K, N] float32 (Gemm's transB undone, alpha folded in)."""
    w = const_of(node.inputs[1]).astype(np.float32)
    if node.op_type == "Gemm":
        if node.attrs.get("transB", 0):
            w = w.T
        alpha = float(node.attrs.get("alpha", 1.0))
        if alpha != 1.0:
            w = w * np.float32(alpha)
    return np.ascontiguousarray(w)


def quantize_int4(model_in, model_out, *, block_size: int = DEFAULT_BLOCK, symmetric: bool = True, fmt: str = "dq",
                  method: str = "rtn", calib=None, samples: int | None = None, batch_size: int = DEFAULT_BATCH,
                  accuracy_level: int = 0, damp: float = DEFAULT_DAMP, exclude=(),
                  progress: Callable[[int], None] | None = None) -> Report:
    """Quantize the MatMul/Gemm weights of ``model_in`` to 4 bits per block of ``block_size`` along K and
    write ``model_out``. ``fmt``: "dq" (opset-21 int4 DequantizeLinear) or "nbits" (com.microsoft
    MatMulNBits, with its ``accuracy_level``). ``method="gptq"`` needs ``calib`` (as for
    quantize_static) and uses ``damp``; ``exclude`` names nodes to keep float."""
    t0 = time.perf_counter()
    check_paths(model_in, model_out)
    block_size = check_block_size(block_size)
    if fmt not in FORMATS:
        raise ConfigError(f"int4 format {fmt!r}: use one of {', '.join(FORMATS)}")
    if method not in METHODS:
        raise ConfigError(f"int4 rounding method {method!r}: use one of {', '.join(METHODS)}")
    if method == "gptq" and calib is None:
        raise ConfigError("int4 method 'gptq' needs calibration data (the layers' input activations): give calib")
    if method == "rtn" and calib is not None:
        raise ConfigError("int4 method 'rtn' takes no calibration data; use method='gptq' to use it")
    if fmt == "dq" and accuracy_level:
        raise ConfigError("accuracy_level is a MatMulNBits attribute: use it with fmt='nbits'")
    graph, _ = prepare(model_in, min_opset=DQ_OPSET if fmt == "dq" else 13)
    nodes, float_nodes = [], []
    for node in graph.nodes:
        if node.op_type not in DYNAMIC_OPS or node.domain:
            continue
        why = "excluded by the caller" if node.name in exclude else _why_float(node)
        if why:
            float_nodes.append(FloatNode(node.name, node.op_type, why))
        else:
            nodes.append(node)
    hessians = _hessians(graph, nodes, calib, samples, batch_size, progress) if method == "gptq" else {}
    before = after = 0
    quantized: Counter = Counter()
    for node in nodes:
        w = weight_kn(node)
        if method == "gptq":
            bw = gptq_blocks(w, hessians[node.inputs[0].name], block_size, symmetric, damp)
        else:
            bw = quantize_blocks(w, block_size, symmetric)
        (_rewrite_dq if fmt == "dq" else _rewrite_nbits)(graph, node, bw, accuracy_level)
        before += w.nbytes
        after += bw.nbytes()
        quantized[node.op_type] += 1
    if fmt == "nbits" and nodes:
        graph.opset_imports.setdefault("com.microsoft", 1)
    drop_unused_initializers(graph)
    graph.topological_sort()
    infer_shapes(graph)
    graph.producer_name = "tuili.compress.quant"
    graph.save(str(model_out))
    size_before = model_size(model_in) if not isinstance(model_in, bytes) else len(model_in)
    report = Report("int4", _label(model_in), str(model_out), size_before, os.path.getsize(model_out), quantized,
                    Counter(), float_nodes, weight_bytes_before=before, weight_bytes_after=after)
    report.settings = {"format": fmt, "block_size": block_size, "weights": "int4 symmetric" if symmetric
                       else "uint4 with zero points", "method": method}
    if fmt == "nbits":
        report.settings["accuracy_level"] = accuracy_level
    report.seconds = time.perf_counter() - t0
    log.debug("%s", report.summary())
    return report


def _hessians(graph: Graph, nodes: list[Node], calib, samples, batch_size, progress) -> dict[str, np.ndarray]:
    """Input Hessian X^T X / rows of every quantized layer, from one calibration pass."""
    reader = reader_for(calib, model_inputs(graph), batch_size, samples)
    observers = {n.inputs[0].name: HessianObserver() for n in nodes}
    collect(graph, observers, reader, progress)
    return {name: obs.hessian() for name, obs in observers.items()}


def _rewrite_dq(graph: Graph, node: Node, bw: BlockWeights, _accuracy_level: int) -> None:
    """The weight becomes int4/uint4 codes in its own layout behind a blocked DequantizeLinear."""
    w_val = node.inputs[1]
    transposed = node.op_type == "Gemm" and bool(node.attrs.get("transB", 0))
    axis = 1 if transposed else 0  # the K axis of the stored weight
    codes, scale, zp = bw.codes[: bw.k], bw.scale, bw.zero_point
    if bw.symmetric:
        stored = (codes.astype(np.int8) - SYMMETRIC_ZERO).astype(ml_dtypes.int4)
    else:
        stored, zp = codes.astype(ml_dtypes.uint4), zp.astype(ml_dtypes.uint4)
    if transposed:
        stored, scale = stored.T, scale.T
        zp = zp.T if zp is not None else None
    inputs = [graph.add_initializer(fresh_name(graph, f"{w_val.name}_int4"), np.ascontiguousarray(stored)),
              graph.add_initializer(fresh_name(graph, f"{w_val.name}_scale"), np.ascontiguousarray(scale))]
    if zp is not None:
        inputs.append(graph.add_initializer(fresh_name(graph, f"{w_val.name}_zero_point"), np.ascontiguousarray(zp)))
    dq = graph.add_node("DequantizeLinear", inputs, name=fresh_name(graph, f"{w_val.name}_DequantizeLinear"),
                        output_names=[fresh_name(graph, f"{w_val.name}_dequantized")],
                        attrs={"axis": axis, "block_size": bw.block_size})
    node.set_input(1, dq.outputs[0])
    if node.op_type == "Gemm" and float(node.attrs.get("alpha", 1.0)) != 1.0:
        node.attrs["alpha"] = 1.0  # folded into the scales by weight_kn


def _rewrite_nbits(graph: Graph, node: Node, bw: BlockWeights, accuracy_level: int) -> None:
    """MatMul/Gemm -> com.microsoft MatMulNBits [-> Add(beta * C)]."""

    w_val, out = node.inputs[1], node.outputs[0]
    base = node.name or out.name
    nb = blocks_of(bw.k, bw.block_size)
    packed = pack_int4(bw.codes.T.reshape(bw.n, nb, bw.block_size))  # [N, blocks, block_size / 2]
    inputs = [node.inputs[0], graph.add_initializer(fresh_name(graph, f"{w_val.name}_nbits"), packed),
              graph.add_initializer(fresh_name(graph, f"{w_val.name}_scale"), np.ascontiguousarray(bw.scale.T))]
    if not bw.symmetric:  # symmetric codes use MatMulNBits' default zero point 8
        inputs.append(graph.add_initializer(fresh_name(graph, f"{w_val.name}_zero_point"), pack_int4(bw.zero_point.T)))
    attrs = {"K": bw.k, "N": bw.n, "bits": 4, "block_size": bw.block_size}
    if accuracy_level:
        attrs["accuracy_level"] = int(accuracy_level)
    c = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    new: list[Node] = []
    y = out if c is None else graph.new_value(fresh_name(graph, f"{base}_matmul"))
    new.append(Node("MatMulNBits", inputs, [y], domain="com.microsoft", attrs=attrs,
                    name=fresh_name(graph, f"{base}_MatMulNBits"), graph=graph))
    if c is not None:
        bias = gemm_bias(graph, c, float(node.attrs.get("beta", 1.0)), new)
        new.append(Node("Add", [y, bias], [out], name=fresh_name(graph, f"{base}_Add"), graph=graph))
    graph.replace_nodes([node], new)


__all__ = ["DEFAULT_BLOCK", "FORMATS", "METHODS", "quantize_int4", "weight_kn"]
