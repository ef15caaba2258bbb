"""Dynamic quantization of MatMul/Gemm (Transformers): int8 weights per output channel, activations
quantized at run time with their own range, so no calibration data is needed.

Each MatMul/Gemm with a constant 2-D weight becomes
    DynamicQuantizeLinear(A) -> MatMulInteger(A_q, W_q, A_zp, 0) -> Cast(float) -> Mul(A_scale * W_scale) [-> Add(bias)]
the pattern onnxruntime fuses into one DynamicQuantizeMatMul (MatMulIntegerToFloat) kernel and tuili's
engine runs op by op. Activations sharing a tensor share one DynamicQuantizeLinear. On a CPU without
an exact int8 dot product the weights keep 7 bits (see ``ptq``).
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter

import numpy as np

from tuili.errors import ConfigError
from tuili.ir import Graph, Node, Value, infer_shapes
from tuili.passes.base import const_of

from .prepare import model_size, prepare
from .ptq import check_paths, default_reduce_range
from .qdq import FLOAT, WeightSettings, drop_unused_initializers, fresh_name, is_float, weight_params
from .qparams import qtype, quantize
from .report import FloatNode, Report

log = logging.getLogger(__name__)

DYNAMIC_OPS = ("MatMul", "Gemm")


def _why_float(node: Node) -> str | None:
    a, w = node.inputs[0], node.inputs[1]
    if not (is_float(a) and is_float(w) and is_float(node.outputs[0])):
        return "not float32"
    if const_of(a) is not None:
        return "constant first operand"
    if const_of(w) is None:
        return "both operands are activations (kept float)"
    if const_of(w).ndim != 2:
        return "weight is not 2-D"
    if node.op_type == "Gemm" and node.attrs.get("transA", 0):
        return "transposed activation (transA=1)"
    return None


def quantize_dynamic(model_in, model_out, per_channel: bool = True, *, weight_type: str = "int8",
                     reduce_range: bool | None = None, op_types=DYNAMIC_OPS, exclude=()) -> Report:
    """Quantize the MatMul/Gemm weights of ``model_in`` to int8 with run-time activation scales; write
    ``model_out``. ``reduce_range=None`` decides by the CPU; ``exclude`` names nodes to keep float."""
    t0 = time.perf_counter()
    check_paths(model_in, model_out)
    unknown = set(op_types) - set(DYNAMIC_OPS)
    if unknown:
        raise ConfigError(f"op types {sorted(unknown)} cannot be quantized dynamically; choose from {', '.join(DYNAMIC_OPS)}")
    if weight_type != "int8":
        raise ConfigError(f"weight type {weight_type!r}: dynamic quantization uses symmetric int8 weights")
    reduce_range = default_reduce_range() if reduce_range is None else bool(reduce_range)
    ws = WeightSettings(qtype("int8", symmetric=True, reduce_range=reduce_range), per_channel)
    graph, _ = prepare(model_in)
    quantized: Counter = Counter()
    float_nodes: list[FloatNode] = []
    activations: dict[str, tuple[Value, Value, Value]] = {}
    for node in list(graph.nodes):
        if node.op_type not in op_types or node.domain:
            continue
        why = "excluded by the caller" if node.name in exclude else _why_float(node)
        if why:
            float_nodes.append(FloatNode(node.name, node.op_type, why))
            continue
        _rewrite(graph, node, ws, activations)
        quantized[node.op_type] += 1
    drop_unused_initializers(graph)
    graph.topological_sort()
    infer_shapes(graph)
    graph.producer_name = "tuili.compress.quant"
    graph.save(str(model_out))
    report = Report("dynamic", str(model_in) if isinstance(model_in, str | os.PathLike) else f"<{type(model_in).__name__}>",
                    str(model_out), model_size(model_in) if not isinstance(model_in, bytes) else len(model_in),
                    os.path.getsize(model_out), quantized, Counter(), float_nodes)
    report.settings = {"activations": "uint8 per tensor, scale at run time", "per_channel": per_channel,
                       "weights": "int8 symmetric" + (" 7-bit (reduce_range)" if reduce_range else "")}
    report.seconds = time.perf_counter() - t0
    log.debug("%s", report.summary())
    return report


def _rewrite(graph: Graph, node: Node, ws: WeightSettings, activations: dict) -> None:
    a, w_val = node.inputs[0], node.inputs[1]
    w = const_of(w_val).astype(np.float32)
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    if node.op_type == "Gemm" and node.attrs.get("transB", 0):
        w = np.ascontiguousarray(w.T)
    scale, zp = weight_params(w, 1, ws)
    axis = 1 if ws.per_channel else None
    if a.name not in activations:
        dq = graph.add_node("DynamicQuantizeLinear", [a], 3, name=fresh_name(graph, f"{a.name}_DynamicQuantizeLinear"),
                            output_names=[fresh_name(graph, f"{a.name}_{s}") for s in ("quantized", "scale", "zero_point")])
        activations[a.name] = tuple(dq.outputs)
    aq, a_scale, a_zp = activations[a.name]
    wq = graph.add_initializer(fresh_name(graph, f"{w_val.name}_quantized"), quantize(w, scale, zp, axis))
    w_zp = graph.add_initializer(fresh_name(graph, f"{w_val.name}_zero_point"), np.zeros(np.shape(scale), np.int8))
    w_scale = graph.add_initializer(fresh_name(graph, f"{w_val.name}_scale"), (scale * np.float32(alpha)).astype(np.float32))
    out = node.outputs[0]
    base = node.name or out.name
    mm = Node("MatMulInteger", [aq, wq, a_zp, w_zp], [graph.new_value(fresh_name(graph, f"{base}_int32"))],
              name=fresh_name(graph, f"{base}_MatMulInteger"), graph=graph)
    cast = Node("Cast", [mm.outputs[0]], [graph.new_value(fresh_name(graph, f"{base}_float"))], attrs={"to": FLOAT},
                name=fresh_name(graph, f"{base}_Cast"), graph=graph)
    s = Node("Mul", [a_scale, w_scale], [graph.new_value(fresh_name(graph, f"{base}_scale"))],
             name=fresh_name(graph, f"{base}_scale_Mul"), graph=graph)
    new = [mm, cast, s]
    c = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    if c is None:
        new.append(Node("Mul", [cast.outputs[0], s.outputs[0]], [out], name=fresh_name(graph, f"{base}_Mul"), graph=graph))
    else:
        scaled = Node("Mul", [cast.outputs[0], s.outputs[0]], [graph.new_value(fresh_name(graph, f"{base}_scaled"))],
                      name=fresh_name(graph, f"{base}_Mul"), graph=graph)
        bias = gemm_bias(graph, c, float(node.attrs.get("beta", 1.0)), new)
        new += [scaled, Node("Add", [scaled.outputs[0], bias], [out], name=fresh_name(graph, f"{base}_Add"), graph=graph)]
    graph.replace_nodes([node], new)


def gemm_bias(graph: Graph, c: Value, beta: float, new: list[Node]) -> Value:
    """Gemm's ``beta * C`` as one value: C itself, a folded constant, or a Mul appended to ``new``."""
    if beta == 1.0:
        return c
    if const_of(c) is not None:
        return graph.add_initializer(fresh_name(graph, f"{c.name}_beta"), (const_of(c) * np.float32(beta)).astype(np.float32))
    k = graph.add_initializer(fresh_name(graph, f"{c.name}_beta"), np.asarray(beta, np.float32))
    n = Node("Mul", [c, k], [graph.new_value(fresh_name(graph, f"{c.name}_times_beta"))], graph=graph,
             name=fresh_name(graph, f"{c.name}_beta_Mul"))
    new.append(n)
    return n.outputs[0]


__all__ = ["DYNAMIC_OPS", "quantize_dynamic"]
