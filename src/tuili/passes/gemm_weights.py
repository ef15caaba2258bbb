"""Pre-compute Gemm's constant operands once instead of on every run:

* ``transB=1`` with a constant B: B is stored transposed (contiguous), ``transB=0``;
* ``alpha != 1`` with a constant B: B is scaled, ``alpha=1``;
* ``beta != 1`` with a constant C: C is scaled, ``beta=1``.

(A Transpose of a constant weight feeding a MatMul is removed by constant folding.)
New arrays are fresh initializers: a weight shared with other nodes is not changed.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir import Graph

from .base import Pass, add_const, attr, const_of

log = logging.getLogger(__name__)


class PrecomputeGemmWeights(Pass):
    name = "gemm-weights"
    level = 2

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.op_type != "Gemm" or node.domain != "" or node.opset < 7 or len(node.inputs) < 2:
                continue
            b_in = node.inputs[1]
            b = const_of(b_in)
            if b_in is None or b is None or b.ndim != 2 or b.dtype.kind != "f":
                continue
            trans_b = int(attr(node, "transB", 0))
            alpha = float(attr(node, "alpha", 1.0))
            c_in = node.inputs[2] if len(node.inputs) > 2 else None
            c = const_of(c_in)
            beta = float(attr(node, "beta", 1.0))
            if c_in is None or c is None or beta == 1.0 or c.dtype.kind != "f":
                c_in = c = None  # C stays as it is
            if not trans_b and alpha == 1.0 and c is None:
                continue
            if trans_b or alpha != 1.0:
                nb = b.T if trans_b else b
                if alpha != 1.0:
                    nb = (nb.astype(np.float64) * alpha).astype(b.dtype)
                node.set_input(1, add_const(graph, (b_in.name or "B") + "_gemm",
                                            np.ascontiguousarray(nb)))
                node.attrs["transB"] = 0
                node.attrs["alpha"] = 1.0
            if c_in is not None and c is not None:
                node.set_input(2, add_const(graph, (c_in.name or "C") + "_gemm",
                                            (c.astype(np.float64) * beta).astype(c.dtype)))
                node.attrs["beta"] = 1.0
            changed = True
        return changed
