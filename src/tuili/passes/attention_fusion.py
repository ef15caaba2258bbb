"""Scaled dot-product attention from its MatMul/Softmax pattern, as one ``tuili::Attention`` node:

    MatMul(Softmax(MatMul(Q, Kᵀ) [/ c | * c] [+ mask]), V)   ->   tuili::Attention(Q, Kᵀ, V, mask?, scale)

(kernel: tuili.ops.attention.fused_attention). The softmax must be over the last axis, the scale a
constant scalar, every intermediate read only here. Heads stay as the exporter laid them out (the
Transposes around the pattern are untouched), so any head layout fuses.
"""
from __future__ import annotations

import logging

from tuili.dtypes import IEEE_FLOATS
from tuili.ir.core import Node

from .base import TUILI_DOMAIN, attr, const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def _last_axis_softmax(node: Node) -> bool:
    axis = attr(node, "axis", -1 if node.opset >= 13 else 1)
    x = node.inputs[0]
    rank = None if x is None or x.shape is None else len(x.shape)
    return axis == -1 or (rank is not None and axis == rank - 1)


def _float(node: Node) -> bool:
    y = node.outputs[0]
    return y.dtype is None or y.dtype in IEEE_FLOATS


def _scalar(v) -> bool:
    c = const_of(v)
    return c is not None and c.size == 1 and c.dtype.kind == "f"


QK = Pat("MatMul", name="qk", uses=1, where=_float)
SCALED = Pat(("Div", "Mul"), name="scaled", uses=1, inputs=(QK, Pat(name="c", where=_scalar)))
SCALED_C_FIRST = Pat("Mul", name="scaled", uses=1, inputs=(Pat(name="c", where=_scalar), QK))


def _masked(scores: Pat) -> Pat:
    return Pat("Add", name="masked", uses=1, commutative=True, inputs=(scores, Pat(name="mask")))


def _pattern(scores: Pat) -> Pat:
    return Pat("MatMul", where=_float, inputs=(
        Pat("Softmax", uses=1, where=_last_axis_softmax, inputs=(scores,)), Pat(name="v")))


def _fuse(m: Match) -> list[Node] | None:
    scale = 1.0
    if "scaled" in m.bound:
        c_arr = const_of(m["c"])
        if c_arr is None:
            return None
        c = float(c_arr.reshape(-1)[0])
        if m["scaled"].op_type == "Div":
            if c == 0.0:
                return None
            scale = 1.0 / c
        else:
            scale = c
    if "masked" in m.bound and m["mask"] is m["qk"].outputs[0]:
        return None
    q, k_t = m["qk"].inputs
    inputs = [q, k_t, m["v"]] + ([m["mask"]] if "masked" in m.bound else [])
    m.graph.root.opset_imports.setdefault(TUILI_DOMAIN, 1)
    return [rebuilt(m.root, op_type="Attention", domain=TUILI_DOMAIN, inputs=inputs, outputs=[m.root.outputs[0]],
                    scale=scale)]


class FuseAttention(RewritePass):
    name = "fuse-attention"
    level = 2
    emits_custom_ops = True
    rules = tuple(Rule(_pattern(scores), _fuse)
                  for scores in (_masked(SCALED), _masked(SCALED_C_FIRST), SCALED, SCALED_C_FIRST, _masked(QK), QK))
