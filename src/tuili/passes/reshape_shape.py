"""Give a Reshape whose target shape is computed at run time (Shape -> Gather -> Unsqueeze -> Concat,
as exporters write for dynamic axes) a constant target instead, from the inferred shapes:

    Reshape(x[batch, seq, 256], Concat(...))  ->  Reshape(x, [0, 0, 4, 64])      (output [batch, seq, 4, 64])

Each output dim becomes its known size, 0 (copy the input's dim at that axis) when it is the same
symbol as the input's, or -1 for at most one dim left over. The shape computation then has no
reader and eliminate-dead removes it. Declined when any output dim is 0 or allowzero is set.
"""
from __future__ import annotations

import logging

import numpy as np

from .base import add_const, attr, const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def constant_target(in_shape: tuple | None, out_shape: tuple | None) -> list[int] | None:
    """The constant Reshape target that gives ``out_shape`` from ``in_shape`` (symbolic dims), or None."""
    if in_shape is None or out_shape is None:
        return None
    target: list[int] = []
    for i, d in enumerate(out_shape):
        if isinstance(d, int):
            if d <= 0:
                return None
            target.append(d)
        elif isinstance(d, str) and d and i < len(in_shape) and in_shape[i] == d:
            target.append(0)
        elif -1 not in target:
            target.append(-1)
        else:
            return None
    return target


def _constant_shape(m: Match):
    node = m.root
    if attr(node, "allowzero", 0) or const_of(node.inputs[1]) is not None:
        return None
    x = node.inputs[0]
    target = None if x is None else constant_target(x.shape, node.outputs[0].shape)
    if target is None:
        return None
    shape = add_const(m.graph, (node.name or "reshape") + "_shape", np.array(target, np.int64))
    return [rebuilt(node, inputs=[node.inputs[0], shape])]


class ConstantReshapeShape(RewritePass):
    name = "constant-reshape-shape"
    level = 2
    needs_shapes = True
    rules = (Rule(Pat("Reshape", where=lambda n: n.opset >= 5 and len(n.inputs) > 1), _constant_shape),)
