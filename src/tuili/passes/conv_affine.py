"""Fold a per-channel constant Mul or Add that follows a Conv into the Conv's weights and bias:

    Mul(Conv(x, W, B), c)  =>  Conv(x, W * c, B * c)
    Add(Conv(x, W, B), c)  =>  Conv(x, W, B + c)

``c`` must broadcast over the Conv output without growing it and vary at most along the channel
axis (shapes like (), (M, 1, 1), (1, M, 1, 1)). New weights are fresh initializers.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir.core import Node

from .base import add_const, const_of, is_const
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def per_channel(c: np.ndarray, rank: int, m: int) -> np.ndarray | None:
    """c as a length-m vector when it broadcasts to (1, m, 1, ...) of ``rank`` dims, else None."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, m):
        return None
    return np.broadcast_to(c.reshape(-1), (m,)) if c.size == 1 else c.reshape(m)


def _const_weights(conv: Node) -> bool:
    """Float constant weights, and a constant bias if there is one."""
    w = const_of(conv.inputs[1])
    b_in = conv.inputs[2] if len(conv.inputs) > 2 else None
    return w is not None and w.dtype.kind == "f" and (b_in is None or is_const(b_in))


def _fold_into(m: Match) -> list[Node] | None:
    conv, op = m["conv"], m.root.op_type
    w = const_of(conv.inputs[1])
    b = const_of(conv.inputs[2]) if len(conv.inputs) > 2 else None
    c = const_of(m["c"])
    if w is None or c is None or c.dtype != w.dtype:  # (the pattern's where= checked both are constant)
        return None
    ch = w.shape[0]
    v = per_channel(c, w.ndim, ch)
    if v is None:
        return None
    v = v.astype(np.float64)
    base = np.zeros(ch) if b is None else b.astype(np.float64)
    w_in = conv.inputs[1]
    if op == "Mul":
        new_w = w.astype(np.float64) * v.reshape((ch,) + (1,) * (w.ndim - 1))
        w_in = add_const(m.graph, (w_in.name or "w") + "_scaled", new_w.astype(w.dtype))
        new_b = base * v
    else:
        new_b = base + v
    b_val = add_const(m.graph, (conv.name or "conv") + "_bias", new_b.astype(w.dtype))
    return [rebuilt(conv, inputs=[conv.inputs[0], w_in, b_val], outputs=[m.root.outputs[0]])]


class FoldConvAffine(RewritePass):
    name = "fold-conv-mul-add"
    level = 2
    rules = (Rule(Pat(("Mul", "Add"), inputs=(Pat("Conv", name="conv", uses=1, where=_const_weights),
                                               Pat(name="c", where=is_const)),
                      commutative=True, where=lambda n: n.opset >= 7), _fold_into),)
