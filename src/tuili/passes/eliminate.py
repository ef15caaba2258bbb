"""Elimination passes: no-op nodes (Identity, inference Dropout, same-type Cast, same-shape Reshape,
identity Transpose) and dead nodes / unused initializers."""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir import Graph
from tuili.ir.core import Node, Value

from .base import Pass, attr, const_of, forward, pinned_values, static_shape

log = logging.getLogger(__name__)


def _noop_input(node: Node) -> Value | None:
    """The input a no-op node passes through unchanged, or None when the node does real work."""
    op, dom = node.op_type, node.domain
    if dom != "" or not node.inputs or node.inputs[0] is None:
        return None
    x = node.inputs[0]
    if op == "Identity":
        return x
    if op == "Dropout":
        if len(node.outputs) > 1 and (node.outputs[1].uses or node.outputs[1].is_graph_output):
            return None  # the mask is read
        if node.opset < 7 and not attr(node, "is_test", 0):
            return None
        if node.opset >= 12 and len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = const_of(node.inputs[2])
            if mode is None or bool(mode.reshape(-1)[0]):
                return None  # training mode, or decided at run time
        return x
    if op == "Cast":
        to = attr(node, "to")
        return x if x.dtype is not None and to == x.dtype and x.is_tensor and node.outputs[0].is_tensor else None
    if op == "Reshape" and len(node.inputs) > 1:
        shape = const_of(node.inputs[1])
        have = static_shape(x)
        if shape is None or have is None or np.any(shape <= 0):
            return None  # 0 / -1 entries depend on allowzero and on the data: not provably a no-op
        return x if tuple(int(d) for d in shape) == have else None
    if op == "Transpose":
        perm = attr(node, "perm")
        return x if perm is not None and list(perm) == list(range(len(perm))) else None
    return None


class EliminateNoOps(Pass):
    """Identity, Dropout in inference mode, Cast to the same type, Reshape to the same static shape,
    Transpose with the identity permutation: readers are rewired to the input."""

    name = "eliminate-noops"
    level = 1
    needs_shapes = True  # Cast to the same type, Reshape to the same shape

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            x = _noop_input(node)
            if x is None:
                continue
            y = node.outputs[0]
            if x.is_tensor != y.is_tensor:
                continue
            if not forward(y, x, pinned):
                continue
            graph.remove_node(node)
            changed = True
        return changed


class EliminateDeadNodes(Pass):
    """Nodes none of whose outputs is read (by a node, a subgraph or the graph outputs), and
    initializers nobody reads."""

    name = "eliminate-dead"
    level = 1

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in reversed(list(graph.nodes)):
            if any(v.uses or v.is_graph_output or id(v) in pinned for v in node.outputs):
                continue
            graph.remove_node(node)
            changed = True
        inputs = {id(v) for v in graph.inputs}
        for name, v in list(graph.initializers.items()):
            if not v.uses and not v.is_graph_output and id(v) not in inputs and id(v) not in pinned:
                del graph.initializers[name]
                v.tensor = None  # its array goes now, not when the garbage collector finds the Value
                if graph.values.get(name) is v:
                    del graph.values[name]
                changed = True
        return changed
