"""Fold an inference-mode BatchNormalization into the Conv / ConvTranspose / Gemm that feeds it.

    y = (conv(x, W) + B - mean) * scale / sqrt(var + eps) + bias
      = conv(x, W * s) + (B - mean) * s + bias          with s = scale / sqrt(var + eps)

The new weights are fresh initializers (a shared weight is never changed in place); arithmetic is
done in float64 and rounded once to the weight's dtype.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir import Graph
from tuili.ir.core import Node

from .base import FLOAT_TYPES, add_const, attr, const_of, drop_node, forward, pinned_values, sole_user

log = logging.getLogger(__name__)


def _bn_params(bn: Node):
    """(s, t) with bn(y) = y * s + t per channel, or None when the BN is not foldable."""
    if bn.domain != "" or len(bn.inputs) < 5 or any(v is None for v in bn.inputs[:5]):
        return None
    if any(v.uses or v.is_graph_output for v in bn.outputs[1:]):
        return None  # training outputs (running mean/var) are read
    if attr(bn, "training_mode", 0) or (bn.opset < 7 and not attr(bn, "is_test", 0)):
        return None
    if bn.opset < 9 and attr(bn, "spatial", 1) != 1:
        return None
    consts = [const_of(v) for v in bn.inputs[1:5]]
    if any(c is None for c in consts) or any(c.ndim != 1 for c in consts):
        return None
    scale, bias, mean, var = (c.astype(np.float64) for c in consts)
    if len({c.shape[0] for c in (scale, bias, mean, var)}) != 1:
        return None
    s = scale / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    return s, bias - mean * s


class FoldBatchNorm:
    name = "fold-batchnorm"

    def run(self, graph: Graph) -> bool:
        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            if node.graph is not graph or node.domain != "" or node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
                continue
            y = node.outputs[0]
            bn = sole_user(y, pinned)
            if bn is None or bn.op_type != "BatchNormalization" or bn.inputs[0] is not y:
                continue
            w = const_of(node.inputs[1]) if len(node.inputs) > 1 else None
            if w is None or w.dtype.kind != "f" or (y.dtype is not None and y.dtype not in FLOAT_TYPES):
                continue
            params = _bn_params(bn)
            if params is None:
                continue
            b_in = node.inputs[2] if len(node.inputs) > 2 else None
            b = None if b_in is None else const_of(b_in)
            if b_in is not None and b is None:
                continue
            folded = self._fold(node, w, b, *params)
            if folded is None:
                continue
            new_w, new_b = folded
            out = bn.outputs[0]
            if not forward(out, y, pinned):
                continue
            node.set_input(1, add_const(graph, (node.inputs[1].name or "w") + "_bn", new_w.astype(w.dtype)))
            bdt = b.dtype if b is not None else w.dtype
            b_val = add_const(graph, (node.name or "b") + "_bn_bias", new_b.astype(bdt))
            if len(node.inputs) > 2:
                node.set_input(2, b_val)
            else:
                node._add_input(b_val)
            if node.op_type == "Gemm":
                node.attrs["beta"] = 1.0
            drop_node(bn)
            changed = True
        return changed

    @staticmethod
    def _fold(node: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray):
        w64 = w.astype(np.float64)
        c = s.shape[0]
        if node.op_type == "Conv":
            if w.ndim < 3 or w.shape[0] != c:
                return None
            new_w = w64 * s.reshape((c,) + (1,) * (w.ndim - 1))
        elif node.op_type == "ConvTranspose":
            group = int(attr(node, "group", 1))
            if w.ndim < 3 or w.shape[1] * group != c:
                return None
            cin, cg = w.shape[0], w.shape[1]
            if cin % group:
                return None
            wg = w64.reshape((group, cin // group, cg) + w.shape[2:])
            new_w = (wg * s.reshape((group, 1, cg) + (1,) * (w.ndim - 2))).reshape(w.shape)
        else:  # Gemm: Y = alpha * A' B' + beta * C, channels are the columns of Y
            if w.ndim != 2:
                return None
            trans_b = int(attr(node, "transB", 0))
            n = w.shape[0] if trans_b else w.shape[1]
            if n != c:
                return None
            new_w = w64 * (s.reshape(c, 1) if trans_b else s.reshape(1, c))
            beta = float(attr(node, "beta", 1.0))
            if b is not None:
                bb = b.astype(np.float64) * beta
                if bb.ndim > 2 or (bb.ndim >= 1 and bb.shape[-1] not in (1, c)):
                    return None
                return new_w, bb * s + t
            return new_w, t
        if b is not None and b.shape != (c,):
            return None
        base = np.zeros(c) if b is None else b.astype(np.float64)
        return new_w, base * s + t
