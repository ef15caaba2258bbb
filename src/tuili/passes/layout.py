"""Layout passes (O3): collapse chains of data-movement ops whose composition is provable.

* Transpose(Transpose(x, p1), p2)  => Transpose(x, p1[p2])   (eliminate-noops drops an identity)
* Reshape(Reshape(x, s1), s2)      => Reshape(x, s2)          when s2 is a constant with no 0 entry
  (a 0 copies a dimension of the *input*, which differs between the two forms) and allowzero is 0.

The first op of the chain must have no other reader.
"""
from __future__ import annotations

import logging

import numpy as np

from .base import attr, const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def _transposes(m: Match):
    p1, p2 = attr(m["first"], "perm"), attr(m.root, "perm")
    if p1 is None or p2 is None or len(p1) != len(p2):
        return None  # a default perm reverses the (maybe unknown) rank: keep it
    return [rebuilt(m.root, inputs=[m["first"].inputs[0]], perm=[int(p1[i]) for i in p2])]


def _reshapes(m: Match):
    s2 = const_of(m.root.inputs[1])
    if s2 is None or np.any(s2 == 0) or attr(m.root, "allowzero", 0) or attr(m["first"], "allowzero", 0):
        return None
    return [rebuilt(m.root, inputs=[m["first"].inputs[0], m.root.inputs[1]])]


class CollapseTransposes(RewritePass):
    name = "collapse-transposes"
    level = 3
    rules = (Rule(Pat("Transpose", inputs=(Pat("Transpose", name="first", uses=1),)), _transposes),)


class CollapseReshapes(RewritePass):
    name = "collapse-reshapes"
    level = 3
    rules = (Rule(Pat("Reshape", inputs=(Pat("Reshape", name="first", uses=1),), where=lambda n: n.opset >= 5),
                  _reshapes),)
