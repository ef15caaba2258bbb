"""SmoothQuant-style scale migration (Xiao et al., 2023): activations with outlier channels make one
per-tensor activation scale coarse for every other channel; dividing channel k of the activation by
s_k and multiplying row k of the weight by s_k leaves X W unchanged and moves the difficulty into the
weights, which are quantized per output channel anyway:

    s_k = max|X_k|^alpha / max|W_k,:|^(1 - alpha)        (alpha = 0.5 by default)

Applied to every MatMul / Gemm (transA = 0) with a constant 2-D weight, grouped by their activation
input (the Q, K and V projections of one LayerNorm output share one s, from their weights' common
row maximum). The division folds into the producer when it is a LayerNormalization whose output
only this group reads (gamma and beta divided by s); otherwise a Mul by 1/s is inserted before the
group.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuili.ir import Graph, Node, Value
from tuili.passes.base import const_of

DEFAULT_ALPHA = 0.5


@dataclass
class Group:
    x: Value  # the shared activation input, channels along its last axis
    nodes: list[Node]


def _weight_rows(node: Node) -> np.ndarray | None:
    """The weight as (K, N) (rows along the activation's channels), or None when not smoothable."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    if node.op_type == "Gemm" and node.attrs.get("transA", 0):
        return None
    w = const_of(node.inputs[1])
    if w is None or w.ndim != 2 or node.inputs[1].uses != [(node, 1)]:
        return None  # a weight shared with another reader would change that reader too
    return w.T if node.op_type == "Gemm" and node.attrs.get("transB", 0) else w


def groups(graph: Graph) -> list[Group]:
    by_x: dict[str, Group] = {}
    for node in graph.nodes:
        x = node.inputs[0] if node.inputs else None
        if x is None or x.const is not None or _weight_rows(node) is None:
            continue
        by_x.setdefault(x.name, Group(x, [])).nodes.append(node)
    return list(by_x.values())


def scales(group: Group, x_absmax: np.ndarray, alpha: float) -> np.ndarray:
    w_max = np.max([np.abs(_weight_rows(n)).max(axis=1) for n in group.nodes], axis=0)
    a = np.asarray(x_absmax, np.float64)
    s = np.power(np.maximum(a, 1e-8), alpha) / np.power(np.maximum(w_max, 1e-8), 1.0 - alpha)
    s = np.where((a > 0) & (w_max > 0), s, 1.0)
    return np.clip(s, 1e-4, 1e4)


def _fold_into_layernorm(group: Group, inv_s: np.ndarray) -> bool:
    ln = group.x.producer
    readers = {id(n) for n, _ in group.x.uses}
    if (ln is None or ln.op_type != "LayerNormalization" or ln.attrs.get("axis", -1) != -1
            or readers != {id(n) for n in group.nodes} or ln.outputs[0] is not group.x):
        return False
    params = [v for v in ln.inputs[1:3] if v is not None]
    if any(const_of(v) is None or len(v.uses) != 1 for v in params):
        return False
    for v in params:
        v.const = (const_of(v) * inv_s).astype(const_of(v).dtype)
    return True


def apply(graph: Graph, group: Group, s: np.ndarray) -> None:
    """Divide the group's activation by ``s`` (folded or a Mul) and multiply its weights' rows by ``s``.
    The caller sorts the graph and infers shapes once all groups are applied."""
    inv_s = (1.0 / s).astype(np.float32)
    if not _fold_into_layernorm(group, inv_s):
        k = graph.add_initializer(graph.unique_name(f"{group.x.name}_smooth"), inv_s)
        mul = graph.add_node("Mul", [group.x, k], name=graph.unique_name(f"{group.x.name}_Smooth"),
                             output_names=[graph.unique_name(f"{group.x.name}_smoothed")])
        for node in group.nodes:
            node.set_input(0, mul.outputs[0])
    for node in group.nodes:
        w_val = node.inputs[1]
        w = const_of(w_val)
        transposed = node.op_type == "Gemm" and node.attrs.get("transB", 0)
        w_val.const = (w * (s[None, :] if transposed else s[:, None])).astype(w.dtype)
