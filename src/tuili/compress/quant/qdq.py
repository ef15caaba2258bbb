"""The QDQ format: which nodes and tensors get QuantizeLinear/DequantizeLinear, and the rewrite.

A float graph becomes a QDQ graph that any ONNX engine runs as is; onnxruntime fuses each
``DQ -> op -> Q`` group into its int8 kernel (QLinearConv, QGemm, QLinearAdd, ...). :func:`plan`
decides from the graph alone (before calibration), :func:`rewrite` applies it with the ranges.

- compute ops (Conv, MatMul and Gemm with a constant weight, Add/Mul of two activations, average
  pooling, Concat): activation inputs and output quantized with their own ranges; weights become
  int8 initializers behind a DequantizeLinear (per output channel), biases int32 with
  scale = x_scale * w_scale (zero point 0), so the integer kernels add them exactly.
- pass-through ops (MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze) whose input is
  quantized: the output uses the input's scale and zero point, so onnxruntime runs them on int8.
- a Relu (or Clip(0, max)) right after a compute op is folded into the Q after it: its output
  range starts at 0, so the zero point is the integer minimum and the Q's clamp is the ReLU.
- everything else stays float (Softmax, LayerNormalization, ... by rule), each with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from tuili.errors import ConfigError
from tuili.ir import Graph, Node, Value, infer_shapes
from tuili.passes.base import const_of

from .biascorrect import output_shift
from .qparams import QType, channel_minmax, dequantize, quantize, scale_zero_point
from .report import FloatNode

FLOAT = onnx.TensorProto.FLOAT
INT32_MAX = 2**31 - 1

COMPUTE = ("Conv", "MatMul", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool", "Concat")
PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
FOLDABLE = ("Relu", "Clip")
# MatMul and Gemm have int8 kernels with a float output (MatMulIntegerToFloat, QGemm): their output
# is quantized only when a quantized node reads it; the others fuse only with a Q after them.
FLOAT_OUTPUT_OK = ("MatMul", "Gemm")
KEPT_FLOAT = {  # by rule: a narrow or nonlinear output that 8 bits would distort, or no int8 kernel
    "Softmax": "accuracy: probabilities need more than 8 bits, kept float by rule",
    "LogSoftmax": "accuracy: kept float by rule",
    "LayerNormalization": "accuracy: normalization statistics, kept float by rule",
    "BatchNormalization": "accuracy: normalization statistics, kept float by rule",
    "InstanceNormalization": "accuracy: normalization statistics, kept float by rule",
    "GroupNormalization": "accuracy: normalization statistics, kept float by rule",
}
NO_KERNEL = "no int8 kernel in onnxruntime's QDQ fusion"


@dataclass
class Plan:
    compute: list[Node] = field(default_factory=list)
    pass_through: list[Node] = field(default_factory=list)
    tensors: dict[str, str] = field(default_factory=dict)  # quantized tensor -> tensor whose range it takes
    folded: dict[str, Node] = field(default_factory=dict)  # output of a folded Relu/Clip -> that node
    float_nodes: list[FloatNode] = field(default_factory=list)

    @property
    def observed(self) -> list[str]:
        """Tensors whose statistics calibration must collect."""
        return list(dict.fromkeys(self.tensors.values()))

    def quantized_ids(self) -> set[int]:
        return {id(n) for n in self.compute + self.pass_through}


def is_float(v: Value | None) -> bool:
    return v is None or v.dtype == FLOAT


def _weight_axis(node: Node) -> int:
    """The output-channel axis of a compute node's weight (input 1)."""
    if node.op_type == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return 1 if node.op_type == "MatMul" else 0


def _why_float(node: Node) -> str | None:
    """None when ``node`` (a compute op) can be quantized, else the reason it stays float."""
    if not all(is_float(v) for v in node.inputs) or not all(is_float(v) for v in node.outputs):
        return "not float32"
    ins = node.inputs
    const = [v is not None and const_of(v) is not None for v in ins]
    op = node.op_type
    if op == "Conv":
        if const[0] or not const[1] or (len(ins) > 2 and ins[2] is not None and not const[2]):
            return "weight or bias is not a constant"
    elif op in ("MatMul", "Gemm"):
        if const[0]:
            return "constant first operand"
        if not const[1]:
            return "both operands are activations (kept float)"
        if const_of(ins[1]).ndim != 2:
            return "weight is not 2-D"
        if op == "Gemm":
            if node.attrs.get("transA", 0):
                return "transposed activation (transA=1)"
            n = const_of(ins[1]).shape[_weight_axis(node)]
            c = const_of(ins[2]) if len(ins) > 2 and ins[2] is not None else None
            if len(ins) > 2 and ins[2] is not None and (c is None or c.shape != (n,)):
                return "bias is not a constant vector of the output size"
            if node.attrs.get("alpha", 1.0) != 1.0 or (c is not None and node.attrs.get("beta", 1.0) != 1.0):
                return "alpha/beta other than 1"
    elif op in ("Add", "Mul"):
        if any(const):
            return "constant operand (float is as fast)"
    elif any(const):
        return "constant input"
    return None


def plan(graph: Graph, *, op_types=COMPUTE, exclude=(), fold_activations: bool = True) -> Plan:
    """Decide, from the graph alone, what to quantize (``exclude``: node names to keep float)."""
    p = Plan()
    produced: dict[str, Node] = {}  # output of an accepted compute node -> it
    quantized_out: set[str] = set()  # tensors whose every reader will read the dequantized value
    exclude = set(exclude)
    for node in graph.nodes:
        op = node.op_type
        if node.name in exclude:
            p.float_nodes.append(FloatNode(node.name, op, "excluded by the caller"))
            continue
        if node.domain:
            p.float_nodes.append(FloatNode(node.name, f"{node.domain}::{op}", "not a standard ONNX op"))
            continue
        if op in COMPUTE and op in op_types:
            why = _why_float(node)
            if why:
                p.float_nodes.append(FloatNode(node.name, op, why))
                continue
            p.compute.append(node)
            acts = node.inputs[:1] if op in ("Conv", "MatMul", "Gemm") else node.inputs
            for v in acts:
                if v is not None:
                    p.tensors[v.name] = p.tensors.get(v.name, v.name)
            produced[node.outputs[0].name] = node
        elif op in PASS_THROUGH:
            x = node.inputs[0]
            if x is not None and is_float(x) and (x.name in produced or x.name in quantized_out):
                p.pass_through.append(node)
                p.tensors.setdefault(x.name, x.name)
                y = node.outputs[0].name
                p.tensors[y] = p.tensors[x.name]
                quantized_out.add(y)
            else:
                p.float_nodes.append(FloatNode(node.name, op, "its input is not quantized"))
        elif op in FOLDABLE and fold_activations and _foldable(node, produced):
            y = node.outputs[0].name
            p.folded[y] = node
            p.tensors[y] = y
            quantized_out.add(y)
            del produced[node.inputs[0].name]  # its Q takes the activation's range instead
        else:
            p.float_nodes.append(FloatNode(node.name, op, KEPT_FLOAT.get(op, NO_KERNEL)))
    ids = p.quantized_ids()
    for y, node in produced.items():
        v = graph.lookup(y)
        if node.op_type not in FLOAT_OUTPUT_OK or any(id(m) in ids for m, _ in v.uses):
            p.tensors[y] = y
    return p


def _foldable(node: Node, produced: dict[str, Node]) -> bool:
    x, y = node.inputs[0], node.outputs[0]
    if x is None or x.name not in produced or len(x.uses) != 1 or x.is_graph_output or y.is_graph_output:
        return False
    if node.op_type == "Clip":
        lo = const_of(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        hi = node.inputs[2] if len(node.inputs) > 2 else None
        return lo is not None and float(lo) == 0.0 and (hi is None or const_of(hi) is not None)
    return True


# ----------------------------------------------------------------------------------- rewrite
@dataclass
class WeightSettings:
    qtype: QType  # symmetric int8 (7 bits with reduce_range)
    per_channel: bool = True


def fresh_name(graph: Graph, hint: str) -> str:
    return hint if graph.lookup(hint) is None else graph.unique_name(hint)


def _qdq(graph: Graph, x: Value, scale: np.ndarray, zp: np.ndarray, axis: int | None = None,
         quantize_node: bool = True) -> Value:
    """DequantizeLinear(QuantizeLinear(x)) (or DequantizeLinear(x) for an already integer ``x``)."""
    s = graph.add_initializer(fresh_name(graph, f"{x.name}_scale"), np.asarray(scale, np.float32))
    z = graph.add_initializer(fresh_name(graph, f"{x.name}_zero_point"), np.asarray(zp))
    attrs = {"axis": axis} if axis is not None and np.ndim(scale) else None
    q = x
    if quantize_node:
        q = graph.add_node("QuantizeLinear", [x, s, z], name=fresh_name(graph, f"{x.name}_QuantizeLinear"),
                           output_names=[fresh_name(graph, f"{x.name}_quantized")], attrs=attrs).outputs[0]
    return graph.add_node("DequantizeLinear", [q, s, z], name=fresh_name(graph, f"{x.name}_DequantizeLinear"),
                          output_names=[fresh_name(graph, f"{x.name}_dequantized")], attrs=attrs).outputs[0]


def weight_params(w: np.ndarray, axis: int | None, ws: WeightSettings, bias: np.ndarray | None = None,
                  x_scale: float | None = None, scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric (scale, zero point) of a weight, per channel along ``axis`` (min-max, unless ``scale`` is
    given); a channel's scale is raised where its bias / (x_scale * w_scale) would overflow int32."""
    lo, hi = channel_minmax(w, axis if ws.per_channel else None)
    mm_scale, zp = scale_zero_point(lo, hi, ws.qtype, symmetric=True)
    if scale is None:
        scale = mm_scale
    else:
        scale = np.asarray(scale, np.float32)
        if scale.size != np.size(mm_scale) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ConfigError(f"given weight scales {scale.shape}: need {np.size(mm_scale)} finite positive values "
                              f"(one per output channel of a weight of shape {w.shape})")
        scale = scale.reshape(np.shape(mm_scale))
    if bias is not None and x_scale is not None:
        need = np.abs(bias.astype(np.float64)) / (float(x_scale) * INT32_MAX)
        scale = np.maximum(scale, need.astype(np.float32) if ws.per_channel else np.float32(need.max()))
    return scale, zp


def rewrite(graph: Graph, p: Plan, act: dict[str, tuple[np.ndarray, np.ndarray]], ws: WeightSettings,
            input_means: dict[str, np.ndarray] | None = None,
            weight_scales: dict[str, np.ndarray] | None = None) -> None:
    """Insert the plan's Q/DQ with ``act`` (observed tensor -> (scale, zero point)) and quantize the weights.
    ``input_means`` (float input tensor -> per-channel mean) turns on bias correction (biascorrect.py)
    for the Conv and Gemm nodes whose input it names. ``weight_scales`` (node name -> scale per output
    channel) replaces the min-max scales of those nodes' weights (QAT's learned scales); weights are
    clamped to ``ws.qtype``'s range either way."""
    ids = p.quantized_ids()
    x_names = {id(n): n.inputs[0].name for n in p.compute}
    params = {t: act[src] for t, src in p.tensors.items()}
    x_scales = {id(n): float(params[n.inputs[0].name][0]) for n in p.compute if n.op_type in ("Conv", "MatMul", "Gemm")}
    # activations
    for t in p.tensors:
        v = graph.lookup(t)
        folded = p.folded.get(t)
        src = folded.inputs[0] if folded is not None else v
        dq = _qdq(graph, src, *params[t])
        own = folded is not None or (v.producer is not None and id(v.producer) in ids)
        for node, i in list(v.uses):
            if node.op_type != "QuantizeLinear" and (own or id(node) in ids):
                node.set_input(i, dq)
        if folded is not None:
            graph.remove_node(folded)
    # weights and biases
    for node in p.compute:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        w_val, axis = node.inputs[1], _weight_axis(node)
        w = const_of(w_val).astype(np.float32)
        b_val = node.inputs[2] if len(node.inputs) > 2 else None
        b = const_of(b_val) if b_val is not None else None
        x_scale = x_scales[id(node)]
        given = (weight_scales or {}).get(node.name)
        scale, zp = weight_params(w, axis, ws, b, x_scale, given)
        ch_axis = axis if ws.per_channel else None
        w_int = _quantize_weight(w, scale, zp, ch_axis, ws.qtype)
        x_mean = (input_means or {}).get(x_names[id(node)])
        if x_mean is not None and (b is not None or node.op_type == "Conv") and float(node.attrs.get("beta", 1.0)):
            shift = output_shift(node, w, dequantize(w_int, scale, zp, ch_axis), x_mean)
            b = (np.zeros(w.shape[0], np.float32) if b is None else b) + shift.astype(np.float32)
            if b_val is None:  # a Conv without bias gets one to carry the correction
                b_val = graph.add_initializer(fresh_name(graph, f"{node.name}_bias"), b)
                if len(node.inputs) < 3:
                    node.inputs.append(None)
                node.set_input(2, b_val)
            scale, zp = weight_params(w, axis, ws, b, x_scale, given)  # the int32 range check sees the new bias
            w_int = _quantize_weight(w, scale, zp, ch_axis, ws.qtype)
        wq = graph.add_initializer(fresh_name(graph, f"{w_val.name}_quantized"), w_int)
        node.set_input(1, _qdq(graph, wq, scale, zp, ch_axis, quantize_node=False))
        if b is not None:
            bscale = (np.float32(x_scale) * scale).astype(np.float32)
            bq = np.clip(np.rint(b.astype(np.float64) / bscale), -INT32_MAX, INT32_MAX).astype(np.int32)
            bv = graph.add_initializer(fresh_name(graph, f"{b_val.name}_quantized"), bq)
            node.set_input(2, _qdq(graph, bv, bscale, np.zeros(np.shape(bscale), np.int32), 0, quantize_node=False))
    drop_unused_initializers(graph)
    graph.topological_sort()
    infer_shapes(graph)


def _quantize_weight(w: np.ndarray, scale, zp, axis: int | None, qt: QType) -> np.ndarray:
    """QuantizeLinear clamped to ``qt``'s range (narrower than the storage type for 4-bit weights in int8
    storage, and a learned scale may clip)."""
    return np.clip(quantize(w, scale, zp, axis).astype(np.int32), qt.qmin, qt.qmax).astype(zp.dtype)


def drop_unused_initializers(graph: Graph) -> None:
    for name, v in list(graph.initializers.items()):
        if not v.uses and not v.is_graph_output and not v.is_graph_input:
            del graph.initializers[name]
            if graph.values.get(name) is v:
                del graph.values[name]
