"""Fold a per-channel constant Mul or Add that follows a Conv into the Conv's weights and bias:

    Mul(Conv(x, W, B), c)  =>  Conv(x, W * c, B * c)
    Add(Conv(x, W, B), c)  =>  Conv(x, W, B + c)

``c`` must broadcast over the Conv output without growing it and vary at most along the channel
axis (shapes like (), (M, 1, 1), (1, M, 1, 1)). New weights are fresh initializers.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir import Graph

from .base import add_const, const_of, drop_node, forward, pinned_values, sole_user

log = logging.getLogger(__name__)


def per_channel(c: np.ndarray, rank: int, m: int) -> np.ndarray | None:
    """c as a length-m vector when it broadcasts to (1, m, 1, ...) of ``rank`` dims, else None."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, m):
        return None
    return np.broadcast_to(c.reshape(-1), (m,)) if c.size == 1 else c.reshape(m)


class FoldConvAffine:
    name = "fold-conv-mul-add"

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            if node.graph is not graph or node.op_type != "Conv" or node.domain != "":
                continue
            w = const_of(node.inputs[1])
            b_in = node.inputs[2] if len(node.inputs) > 2 else None
            b = const_of(b_in)
            if w is None or w.dtype.kind != "f" or (b_in is not None and b is None):
                continue
            y = node.outputs[0]
            user = sole_user(y, pinned)
            if user is None or user.domain != "" or user.op_type not in ("Mul", "Add") or user.opset < 7:
                continue
            a0, a1 = user.inputs
            if a0 is a1:
                continue
            c = const_of(a1 if a0 is y else a0)
            if c is None or c.dtype != w.dtype:
                continue
            m = w.shape[0]
            v = per_channel(c, w.ndim, m)
            if v is None:
                continue
            v = v.astype(np.float64)
            base = np.zeros(m) if b is None else b.astype(np.float64)
            if user.op_type == "Mul":
                new_w = w.astype(np.float64) * v.reshape((m,) + (1,) * (w.ndim - 1))
                new_b = base * v
            else:
                new_w, new_b = None, base + v
            if not forward(user.outputs[0], y, pinned):
                continue
            if new_w is not None:
                node.set_input(1, add_const(graph, (node.inputs[1].name or "w") + "_scaled", new_w.astype(w.dtype)))
            b_val = add_const(graph, (node.name or "conv") + "_bias", new_b.astype(w.dtype))
            if len(node.inputs) > 2:
                node.set_input(2, b_val)
            else:
                node._add_input(b_val)
            drop_node(user)
            changed = True
        return changed
