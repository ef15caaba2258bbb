"""Fuse a Conv with what follows it into one ``tuili::FusedConv`` (kernel: tuili.ops.fused):

    Add(Conv(...), Z)                       => FusedConv(X, W, B, Z)          (residual connections)
    Act(Conv(...) [+ Z])                    => FusedConv(..., activation=Act, activation_params=[...])
    y = Conv(...) [+ Z]; Mul(y, Sigmoid(y)) => FusedConv(..., activation="Swish")       (SiLU)

for Relu, LeakyRelu, Clip (constant bounds: ReLU6), HardSigmoid, HardSwish, Sigmoid, Tanh. The
intermediate must have no other reader (for Swish: exactly the Sigmoid and the Mul), and the
output a float type the fused kernel computes in. A FusedConv with no activation yet is a Conv to
these rules, so a chain fuses step by step.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from tuili.dtypes import IEEE_FLOATS
from tuili.ir.core import Node

from .base import TUILI_DOMAIN, attr, const_of
from .conv_affine import per_channel
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def _activation(node: Node) -> tuple[str, list[float]] | None:
    """(activation name, params) when ``node`` is a supported elementwise activation of its input 0."""
    if len(node.outputs) != 1:
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


def _fusable(node: Node) -> bool:
    """One float output and no activation yet (a Z input may be there already)."""
    y = node.outputs[0]
    return len(node.outputs) == 1 and (y.dtype is None or y.dtype in IEEE_FLOATS) and not attr(node, "activation", "")


def _no_z(node: Node) -> bool:
    return _fusable(node) and not (len(node.inputs) > 3 and node.inputs[3] is not None)


def _opset7(node: Node) -> bool:
    return node.opset >= 7


_CONV = ("Conv", f"{TUILI_DOMAIN}::FusedConv")
ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "HardSwish", "LeakyRelu", "HardSigmoid", "Clip")


def _fused(m: Match, *, z=None, activation: tuple[str, list[float]] | None = None) -> list[Node]:
    """The FusedConv that replaces the match: the conv's inputs (+ Z) and attributes, the root's output."""
    conv = m["conv"]
    inputs = list(conv.inputs) + [None] * (4 - len(conv.inputs))
    if z is not None:
        inputs[3] = z
    while inputs and inputs[-1] is None:
        inputs.pop()
    extra: dict[str, Any] = {}  # attributes, as Node.attrs holds them
    if activation is not None:
        extra["activation"] = activation[0]
        extra["activation_params"] = [float(p) for p in activation[1]] or None
    m.graph.root.opset_imports.setdefault(TUILI_DOMAIN, 1)
    return [rebuilt(conv, op_type="FusedConv", domain=TUILI_DOMAIN, inputs=inputs, outputs=[m.root.outputs[0]],
                    **extra)]


def _residual(m: Match) -> list[Node] | None:
    conv, z = m["conv"], m["z"]
    w = conv.inputs[1]
    zc = const_of(z)
    if (zc is not None and conv.op_type == "Conv" and w is not None and w.shape is not None
            and per_channel(zc, len(w.shape), w.shape[0]) is not None):
        return None  # a per-channel constant: fold-conv-mul-add puts it into the bias
    return _fused(m, z=z)


def _activated(m: Match) -> list[Node] | None:
    act = _activation(m.root)
    return None if act is None else _fused(m, activation=act)


def _swish(m: Match) -> list[Node] | None:
    # y is read by exactly the Sigmoid and the Mul
    return _fused(m, activation=("Swish", [])) if m.read_only_here(m["conv"].outputs[0], 2) else None


RULES = (
    Rule(Pat("Add", inputs=(Pat(_CONV, name="conv", uses=1, where=_no_z), Pat(name="z")), commutative=True,
             where=_opset7), _residual),
    Rule(Pat(ACTIVATIONS, inputs=(Pat(_CONV, name="conv", uses=1, where=_fusable),)), _activated),
    Rule(Pat("Mul", inputs=(Pat(_CONV, name="conv", where=_fusable),
                            Pat("Sigmoid", inputs=(Pat(_CONV, name="conv"),), uses=1)),
             commutative=True, where=_opset7), _swish),
)


class FuseConv(RewritePass):
    name = "fuse-conv"
    level = 2
    emits_custom_ops = True
    rules = RULES
