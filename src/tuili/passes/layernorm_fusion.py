"""LayerNormalization (opset 17) from the primitives older exporters write:

    d = x - ReduceMean(x);  y = d / Sqrt(ReduceMean(Pow(d, 2)) + eps) [* gamma] [+ beta]

over the last axis, with constant eps, gamma and beta (gamma defaults to ones). Needs the model's
opset to be 17 or newer (the op does not exist before).
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir.core import Node, Value

from .base import add_const, attr, const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)


def _last_axis_mean(node: Node) -> bool:
    axes: list[int] | None
    if node.opset >= 18:
        c = const_of(node.inputs[1]) if len(node.inputs) > 1 else None
        axes = None if c is None else [int(a) for a in c.reshape(-1)]
    else:
        axes = attr(node, "axes")
    x = node.inputs[0]
    rank = None if x is None or x.shape is None else len(x.shape)
    return (axes is not None and len(axes) == 1 and attr(node, "keepdims", 1) == 1
            and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1)))


def _const_scalar(v: Value, value: float | None = None) -> bool:
    c = const_of(v)
    return c is not None and c.size == 1 and c.dtype.kind == "f" and (value is None or float(c.reshape(-1)[0]) == value)


X = Pat(name="x")
D = Pat("Sub", name="d", uses=2, inputs=(X, Pat("ReduceMean", uses=1, where=_last_axis_mean, inputs=(X,))))
VAR = Pat("ReduceMean", uses=1, where=_last_axis_mean, inputs=(
    Pat("Pow", uses=1, inputs=(D, Pat(where=lambda v: _const_scalar(v, 2.0)))),))
STD = Pat("Sqrt", uses=1, inputs=(Pat("Add", uses=1, commutative=True, inputs=(
    VAR, Pat(name="eps", where=_const_scalar))),))
NORM = Pat("Div", name="norm", inputs=(D, STD))


def _vector(m: Match, name: str) -> np.ndarray | None:
    return const_of(m[name]) if name in m.bound else None


def _extended_later(m: Match) -> bool:
    """The root's one reader is the Mul by gamma / Add of beta a longer rule takes when it gets there."""
    y = m.root.outputs[0]
    if len(y.uses) != 1 or y.is_graph_output:
        return False
    reader = y.uses[0][0]
    want = {"Div": "Mul", "Mul": "Add"}.get(m.root.op_type)
    return reader.op_type == want and reader.graph is m.graph and any(
        v is not y and const_of(v) is not None for v in reader.inputs)


def _fuse(m: Match) -> list[Node] | None:
    if m.root.opset < 17 or (m.root.op_type != "Add" and _extended_later(m)):
        return None
    x = m["x"]
    gamma, beta = _vector(m, "gamma"), _vector(m, "beta")
    if ("gamma" in m.bound and gamma is None) or ("beta" in m.bound and beta is None):
        return None
    if x.shape is None or not isinstance(x.shape[-1], int):
        return None
    width = x.shape[-1]
    eps_c = const_of(m["eps"])
    if eps_c is None:
        return None
    dtype = eps_c.dtype
    for c in (gamma, beta):
        if c is not None and (c.dtype != dtype or c.size not in (1, width) or c.ndim > 1 and c.shape[:-1] != (1,) * (c.ndim - 1)):
            return None
    g = m.graph
    scale = add_const(g, "ln_scale", np.broadcast_to(gamma.reshape(-1) if gamma is not None else np.ones(1, dtype),
                                                      (width,)).copy())
    inputs = [x, scale]
    if beta is not None:
        inputs.append(add_const(g, "ln_bias", np.broadcast_to(beta.reshape(-1), (width,)).copy()))
    eps = float(eps_c.reshape(-1)[0])
    return [rebuilt(m.root, op_type="LayerNormalization", inputs=inputs, outputs=[m.root.outputs[0]], axis=-1,
                    epsilon=eps)]


_GAMMA = Pat("Mul", name="scaled", uses=1, commutative=True, inputs=(
    Pat("Div", name="norm", uses=1, inputs=(D, STD)), Pat(name="gamma")))


class FuseLayerNorm(RewritePass):
    name = "fuse-layernorm"
    level = 2
    needs_shapes = True  # the normalized axis must be the last, of known width
    rules = (Rule(Pat("Add", commutative=True, inputs=(_GAMMA, Pat(name="beta"))), _fuse),
             Rule(_GAMMA, _fuse),
             Rule(NORM, _fuse))
