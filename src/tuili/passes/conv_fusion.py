"""Fuse a Conv with what follows it into one ``tuili::FusedConv`` (kernel: tuili.ops.fused):

    Conv -> Add(., Z)            => FusedConv(X, W, B, Z)                 (residual connections)
    Conv [-> Add] -> activation  => FusedConv(..., activation=..., activation_params=[...])
    Conv [-> Add] = y; Mul(y, Sigmoid(y))  => FusedConv(..., activation="Swish")     (SiLU)

for Relu, LeakyRelu, Clip (constant bounds: ReLU6), HardSigmoid, HardSwish, Sigmoid, Tanh. The
intermediate must have no other reader (for Swish: exactly the Sigmoid and the Mul). The fused node takes the place of the last node of the
pattern, so everything it reads is computed before it.
"""
from __future__ import annotations

import logging
import math

from tuili.ir import Graph
from tuili.ir.core import Node

from .base import TUILI_DOMAIN, attr, const_of, drop_node, pinned_values, sole_user

from .conv_affine import per_channel

log = logging.getLogger(__name__)


def _activation(node: Node) -> tuple[str, list[float]] | None:
    """(activation name, params) when ``node`` is a supported elementwise activation of its input 0."""
    if node.domain != "" or len(node.outputs) != 1:
        return None
    op = node.op_type
    if op in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
        return op, []
    if op == "LeakyRelu":
        return op, [float(attr(node, "alpha", 0.01))]
    if op == "HardSigmoid":
        return op, [float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))]
    if op == "Clip":
        if node.opset < 11:
            return op, [float(attr(node, "min", -math.inf)), float(attr(node, "max", math.inf))]
        bounds = []
        for i, default in ((1, -math.inf), (2, math.inf)):
            v = node.inputs[i] if len(node.inputs) > i else None
            if v is None:
                bounds.append(default)
                continue
            c = const_of(v)
            if c is None or c.size > 1 or c.dtype.kind != "f":
                return None
            bounds.append(float(c.reshape(-1)[0]) if c.size else default)
        return op, bounds
    return None


def _swish(y, pinned) -> tuple[Node, Node] | None:
    """(Sigmoid, Mul) when ``y`` is read exactly by Sigmoid(y) and Mul(y, that sigmoid), else None."""
    if y.is_graph_output or id(y) in pinned or len(y.uses) != 2:
        return None
    users = [n for n, _ in y.uses]
    sig = next((n for n in users if n.op_type == "Sigmoid" and n.domain == ""), None)
    mul = next((n for n in users if n.op_type == "Mul" and n.domain == "" and n.opset >= 7), None)
    if sig is None or mul is None or sig.graph is not y.graph or mul.graph is not y.graph:
        return None
    s = sig.outputs[0]
    if s.is_graph_output or id(s) in pinned or len(s.uses) != 1 or s.uses[0][0] is not mul:
        return None
    if {id(v) for v in mul.inputs} != {id(y), id(s)}:
        return None
    return sig, mul


def _is_conv(node: Node) -> bool:
    return (node.op_type == "Conv" and node.domain == "") or (node.op_type == "FusedConv" and node.domain == TUILI_DOMAIN)


class FuseConv:
    name = "fuse-conv"

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            if node.graph is not graph or not _is_conv(node) or len(node.outputs) != 1:
                continue
            y = node.outputs[0]
            user = sole_user(y, pinned)
            if y.dtype is not None and y.dtype not in (1, 10, 11):
                continue
            act = attr(node, "activation", "")
            has_z = len(node.inputs) > 3 and node.inputs[3] is not None
            if user is not None and user.op_type == "Add" and user.domain == "" and user.opset >= 7 and not act and not has_z:
                a, b = user.inputs
                if a is b:
                    continue
                z = b if a is y else a
                zc = const_of(z)
                if zc is not None and node.op_type == "Conv" and node.inputs[1] is not None \
                        and node.inputs[1].shape is not None and per_channel(zc, len(node.inputs[1].shape),
                                                                             node.inputs[1].shape[0]) is not None:
                    continue  # a per-channel constant: fold-conv-mul-add puts it into the bias
                self._fuse(graph, node, user, z=z)
                changed = True
                continue
            if user is None and not act:
                swish = _swish(y, pinned)
                if swish is not None:
                    sig, mul = swish
                    self._fuse(graph, node, mul, activation=("Swish", []), also=sig)
                    changed = True
                continue
            if user is None:
                continue
            fa = _activation(user)
            if fa is not None and not act and user.inputs[0] is y:
                self._fuse(graph, node, user, activation=fa)
                changed = True
        return changed

    @staticmethod
    def _fuse(graph: Graph, conv: Node, last: Node, z=None, activation=None, also: Node | None = None) -> None:
        inputs = list(conv.inputs) + [None] * (4 - len(conv.inputs))
        if z is not None:
            inputs[3] = z
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs = dict(conv.attrs)
        if activation is not None:
            attrs["activation"], attrs["activation_params"] = activation[0], [float(p) for p in activation[1]]
            if not attrs["activation_params"]:
                del attrs["activation_params"]
        if also is not None:  # a node inside the pattern (Swish's Sigmoid), read only by ``last``
            drop_node(also)
        out = last.outputs[0]
        pos = graph.nodes.index(last)
        last.detach()
        graph.nodes.pop(pos)
        fused = Node("FusedConv", inputs, [out], domain=TUILI_DOMAIN, name=conv.name or graph.unique_name("FusedConv"),
                      attrs=attrs, graph=graph)
        graph.nodes.insert(pos, fused)
        drop_node(conv)
        graph.root.opset_imports.setdefault(TUILI_DOMAIN, 1)
