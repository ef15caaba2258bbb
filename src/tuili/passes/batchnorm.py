"""Fold an inference-mode BatchNormalization into the Conv / ConvTranspose / Gemm that feeds it.

    y = (conv(x, W) + B - mean) * scale / sqrt(var + eps) + bias
      = conv(x, W * s) + (B - mean) * s + bias          with s = scale / sqrt(var + eps)

The new weights are fresh initializers (a shared weight is never changed in place); arithmetic is
done in float64 and rounded once to the weight's dtype.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.dtypes import IEEE_FLOATS
from tuili.ir.core import Node

from .base import add_const, attr, const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def _bn_params(m: Match):
    """(s, t) with bn(y) = y * s + t per channel, or None when the BN is not foldable."""
    bn = m.root
    if len(bn.inputs) < 5 or any(v is None for v in bn.inputs[:5]):
        return None
    if not all(m.read_only_here(v, 0) for v in bn.outputs[1:]):
        return None  # training outputs (running mean/var) are read
    if attr(bn, "training_mode", 0) or (bn.opset < 7 and not attr(bn, "is_test", 0)):
        return None
    if bn.opset < 9 and attr(bn, "spatial", 1) != 1:
        return None
    consts = [c for v in bn.inputs[1:5] if (c := const_of(v)) is not None]
    if len(consts) < 4 or any(c.ndim != 1 for c in consts):
        return None
    scale, bias, mean, var = (c.astype(np.float64) for c in consts)
    if len({c.shape[0] for c in (scale, bias, mean, var)}) != 1:
        return None
    s = scale / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    return s, bias - mean * s


def _float_weights(node: Node) -> bool:
    y = node.outputs[0]
    w = const_of(node.inputs[1]) if len(node.inputs) > 1 else None
    return w is not None and w.dtype.kind == "f" and (y.dtype is None or y.dtype in IEEE_FLOATS)


def _fold(node: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray):
    """(new weights, new bias) of ``node`` followed by y * s + t, or None when the shapes do not fit."""
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


def _fold_into(m: Match) -> list[Node] | None:
    node = m["node"]
    w = const_of(node.inputs[1])
    params = _bn_params(m)
    if w is None or params is None:  # (the pattern's where= checked w is constant)
        return None
    b_in = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b_in is None else const_of(b_in)
    if b_in is not None and b is None:
        return None
    folded = _fold(node, w, b, *params)
    if folded is None:
        return None
    new_w, new_b = folded
    g = m.graph
    w_val = add_const(g, (node.inputs[1].name or "w") + "_bn", new_w.astype(w.dtype))
    b_val = add_const(g, (node.name or "b") + "_bn_bias", new_b.astype(b.dtype if b is not None else w.dtype))
    new = rebuilt(node, inputs=[node.inputs[0], w_val, b_val], outputs=[m.root.outputs[0]])
    if node.op_type == "Gemm":
        new.attrs["beta"] = 1.0  # folded into the bias
    return [new]


class FoldBatchNorm(RewritePass):
    name = "fold-batchnorm"
    level = 2
    rules = (Rule(Pat("BatchNormalization", inputs=(
        Pat(("Conv", "ConvTranspose", "Gemm"), name="node", uses=1, where=_float_weights),)), _fold_into),)
