"""MatMul followed by an Add of a bias:

* ``Gemm(A, B, C)`` where that is legal: A and B of rank 2 (A's rank known from shapes), C a
  constant that broadcasts to (M, N) from (N,) or (1, N);
* otherwise ``tuili::FusedMatMul(A, B, bias)`` (any ranks; the bias is added in place), when
  custom ops are allowed.

The fused node replaces the Add, whose output it keeps.
"""
from __future__ import annotations

import logging

from tuili.ir import Graph
from tuili.ir.core import Node

from .base import TUILI_DOMAIN, const_of, drop_node, pinned_values, sole_user

log = logging.getLogger(__name__)


class FuseMatMulAdd:
    name = "fuse-matmul-add"

    def __init__(self, allow_custom: bool = True):
        self.allow_custom = allow_custom

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            if node.graph is not graph or node.op_type != "MatMul" or node.domain != "":
                continue
            y = node.outputs[0]
            add = sole_user(y, pinned)
            if add is None or add.op_type != "Add" or add.domain != "" or add.opset < 7:
                continue
            a_in, b_in = add.inputs
            if a_in is b_in:
                continue
            bias = b_in if a_in is y else a_in
            if y.dtype is not None and y.dtype not in (1, 10, 11):
                continue
            A, B = node.inputs
            c = const_of(bias)
            b = const_of(B)
            rank_a = None if A.shape is None else len(A.shape)
            n = b.shape[1] if b is not None and b.ndim == 2 else None
            if (rank_a == 2 and n is not None and c is not None and c.dtype == b.dtype
                    and c.shape in ((n,), (1, n))):
                self._replace(graph, node, add, "Gemm", "", [A, B, bias])
                changed = True
            elif self.allow_custom:
                self._replace(graph, node, add, "FusedMatMul", TUILI_DOMAIN, [A, B, bias])
                changed = True
        return changed

    @staticmethod
    def _replace(graph: Graph, matmul: Node, add: Node, op: str, domain: str, inputs) -> None:
        out = add.outputs[0]
        pos = graph.nodes.index(add)
        add.detach()
        graph.nodes.pop(pos)
        fused = Node(op, inputs, [out], domain=domain, name=matmul.name or graph.unique_name(op), graph=graph)
        graph.nodes.insert(pos, fused)
        drop_node(matmul)
        if domain:
            graph.root.opset_imports.setdefault(domain, 1)
