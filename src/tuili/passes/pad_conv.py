"""Fold a constant zero Pad into the Conv that reads it (the Conv's own pads do the same work):

    Conv(Pad(x, [0, 0, t, l, 0, 0, b, r]), W)   ->   Conv(x, W, pads = conv pads + [t, l, b, r])

Only constant mode with value 0, non-negative pads on the spatial axes (none on batch/channels),
and a Conv without auto_pad.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir.core import Node

from .base import attr, const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def _zero_pads(pad: Node) -> list[int] | None:
    """The Pad's pads when it is a constant zero padding, else None."""
    if attr(pad, "mode", "constant") != "constant":
        return None
    if pad.opset < 11:
        pads, value = attr(pad, "pads"), float(attr(pad, "value", 0.0))
    else:
        extra = pad.inputs[2:]
        if len(extra) > 1 and extra[1] is not None:
            return None  # axes (opset 18+)
        pads_c = const_of(pad.inputs[1]) if len(pad.inputs) > 1 else None
        value_c = const_of(extra[0]) if extra and extra[0] is not None else np.zeros(1)
        if pads_c is None or value_c is None or value_c.size != 1:
            return None
        pads, value = [int(p) for p in pads_c.reshape(-1)], float(value_c.reshape(-1)[0])
    return None if pads is None or value != 0.0 else list(pads)


def _fold(m: Match) -> list[Node] | None:
    conv, pad = m.root, m["pad"]
    pads = _zero_pads(pad)
    if pads is None or attr(conv, "auto_pad", "NOTSET") != "NOTSET" or any(p < 0 for p in pads):
        return None
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if rank < 3 or begin[:2] != [0, 0] or end[:2] != [0, 0]:
        return None
    spatial = rank - 2
    old = list(attr(conv, "pads", [0] * (2 * spatial)))
    if len(old) != 2 * spatial:
        return None
    new = [old[i] + begin[2 + i] for i in range(spatial)] + [old[spatial + i] + end[2 + i] for i in range(spatial)]
    return [rebuilt(conv, inputs=[pad.inputs[0], *conv.inputs[1:]], pads=new)]


class FoldPadConv(RewritePass):
    name = "fold-pad-conv"
    level = 2
    rules = (Rule(Pat("Conv", inputs=(Pat("Pad", name="pad", uses=1),)), _fold),)
