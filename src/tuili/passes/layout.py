"""Layout passes (O3): collapse chains of data-movement ops whose composition is provable.

* Transpose(Transpose(x, p1), p2)  => Transpose(x, p1[p2])   (dropped when that is the identity)
* Reshape(Reshape(x, s1), s2)      => Reshape(x, s2)          when s2 is a constant with no 0 entry
  (a 0 copies a dimension of the *input*, which differs between the two forms) and allowzero is 0.

The first op of the chain must have no other reader.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir import Graph

from .base import attr, const_of, drop_node, pinned_values, sole_user

log = logging.getLogger(__name__)


class CollapseTransposes:
    name = "collapse-transposes"

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            if node.graph is not graph or node.op_type != "Transpose" or node.domain != "":
                continue
            nxt = sole_user(node.outputs[0], pinned)
            if nxt is None or nxt.op_type != "Transpose" or nxt.domain != "":
                continue
            p1, p2 = attr(node, "perm"), attr(nxt, "perm")
            if p1 is None or p2 is None or len(p1) != len(p2):
                continue  # a default perm reverses the (maybe unknown) rank: keep it
            nxt.attrs["perm"] = [int(p1[i]) for i in p2]
            nxt.set_input(0, node.inputs[0])
            drop_node(node)
            changed = True
        return changed


class CollapseReshapes:
    name = "collapse-reshapes"

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            if node.graph is not graph or node.op_type != "Reshape" or node.domain != "" or node.opset < 5:
                continue
            nxt = sole_user(node.outputs[0], pinned)
            if nxt is None or nxt.op_type != "Reshape" or nxt.domain != "" or nxt.inputs[0] is not node.outputs[0]:
                continue
            s2 = const_of(nxt.inputs[1])
            if s2 is None or np.any(s2 == 0) or attr(nxt, "allowzero", 0) or attr(node, "allowzero", 0):
                continue
            nxt.set_input(0, node.inputs[0])
            drop_node(node)
            changed = True
        return changed
