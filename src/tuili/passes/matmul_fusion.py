"""MatMul followed by an Add of a bias, as one node that keeps the Add's output:

* ``fuse-gemm``: ``Gemm(A, B, C)`` where that is legal: A and B of rank 2 (A's rank known from
  shapes), C a constant that broadcasts to (M, N) from (N,) or (1, N);
* ``fuse-matmul-add``: otherwise ``tuili::FusedMatMul(A, B, bias)`` (any ranks; the bias is added
  in place). It runs after fuse-gemm, so it only takes what Gemm cannot.
"""
from __future__ import annotations

import logging

from tuili.dtypes import IEEE_FLOATS
from tuili.ir.core import Node

from .base import TUILI_DOMAIN, const_of, is_const
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def _float_out(node: Node) -> bool:
    y = node.outputs[0]
    return y.dtype is None or y.dtype in IEEE_FLOATS


def _bias_add(bias: Pat) -> Pat:
    return Pat("Add", inputs=(Pat("MatMul", name="matmul", uses=1, where=_float_out), bias), commutative=True,
               where=lambda add: add.opset >= 7)


def _gemm(m: Match) -> list[Node] | None:
    a, b_in = m["matmul"].inputs
    b, c = const_of(b_in), const_of(m["bias"])
    if a.shape is None or len(a.shape) != 2 or b is None or b.ndim != 2 or c is None or c.dtype != b.dtype:
        return None
    if c.shape not in ((b.shape[1],), (1, b.shape[1])):
        return None
    return [rebuilt(m["matmul"], op_type="Gemm", inputs=[a, b_in, m["bias"]], outputs=[m.root.outputs[0]])]


def _fused_matmul(m: Match) -> list[Node]:
    m.graph.root.opset_imports.setdefault(TUILI_DOMAIN, 1)
    return [rebuilt(m["matmul"], op_type="FusedMatMul", domain=TUILI_DOMAIN,
                    inputs=[*m["matmul"].inputs, m["bias"]], outputs=[m.root.outputs[0]])]


class FuseGemm(RewritePass):
    name = "fuse-gemm"
    level = 2
    needs_shapes = True  # A's rank
    rules = (Rule(_bias_add(Pat(name="bias", where=is_const)), _gemm),)


class FuseMatMulAdd(RewritePass):
    name = "fuse-matmul-add"
    level = 2
    emits_custom_ops = True
    rules = (Rule(_bias_add(Pat(name="bias")), _fused_matmul),)
