"""Activations exporters spell out in primitives, as one node:

    Gelu      0.5 * x * (1 + Erf(x / sqrt(2)))                       (any order of the products)
    Gelu/tanh 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    HardSigmoid  Clip(x + 3, 0, 6) / 6   (or * 1/6)                   -> HardSigmoid(alpha=1/6, beta=0.5)
                 Clip(y, 0, 6) / 6 (the + 3 folded into a Conv's bias) -> HardSigmoid(alpha=1/6, beta=0)
    HardSwish    x * HardSigmoid(x, 1/6, 0.5)                        -> HardSwish
    SiLU         x * Sigmoid(x)

``fuse-activations`` keeps standard ONNX: HardSigmoid and HardSwish always, Gelu only where the
model's opset has it (20+), SiLU as Swish (24+). ``fuse-activations-contrib`` (``--target tuili``)
writes what is left as onnxruntime's contrib ops, which tuili and onnxruntime both run:
com.microsoft Gelu, FastGelu (tanh form) and QuickGelu(alpha=1) for SiLU. The standard pass runs
before fuse-conv (which takes HardSigmoid/HardSwish into a Conv), the contrib one after it (so a
Conv followed by x * Sigmoid(x) becomes one FusedConv first).
"""
from __future__ import annotations

import logging
import math

from tuili.dtypes import IEEE_FLOATS
from tuili.ir.core import Node, Value

from .base import const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"


def _scalar(value: float, rel: float = 1e-4):
    """A `where` for a constant scalar (any shape of one element) close to ``value``."""
    def check(v: Value) -> bool:
        c = const_of(v)
        return (c is not None and c.size == 1 and c.dtype.kind == "f"
                and math.isclose(float(c.reshape(-1)[0]), value, rel_tol=rel, abs_tol=1e-7))
    return check


def _float(node: Node) -> bool:
    y = node.outputs[0]
    return y.dtype is None or y.dtype in IEEE_FLOATS


X = Pat(name="x")


def _mul(a: Pat, b: Pat, **kw) -> Pat:
    return Pat("Mul", inputs=(a, b), commutative=True, **kw)


def _one_plus(inner: Pat) -> Pat:
    return Pat("Add", inputs=(inner, Pat(where=_scalar(1.0))), commutative=True, uses=1)


_ERF = Pat("Erf", uses=1, inputs=(Pat(("Div", "Mul"), name="scale", uses=1, inputs=(X, Pat(name="c"))),))
_X3 = Pat(("Pow", "Mul"), name="cube", uses=1)
_TANH = Pat("Tanh", uses=1, inputs=(_mul(Pat("Add", uses=1, commutative=True, inputs=(
    X, _mul(_X3, Pat(where=_scalar(0.044715)), uses=1))), Pat(where=_scalar(math.sqrt(2 / math.pi))), uses=1),))


def _gelu_patterns(core: Pat) -> tuple[Pat, ...]:
    """0.5 * x * (1 + core) as exporters order the products."""
    half = Pat(where=_scalar(0.5))
    one_plus = _one_plus(core)
    return (_mul(_mul(X, one_plus, uses=1), half, where=_float),          # (x * (1 + e)) * 0.5
            _mul(_mul(X, half, uses=1), one_plus, where=_float),          # (x * 0.5) * (1 + e)
            _mul(X, _mul(one_plus, half, uses=1), where=_float))          # x * ((1 + e) * 0.5)


def _erf_scale_ok(m: Match) -> bool:
    scale = m["scale"]
    want = math.sqrt(2) if scale.op_type == "Div" else 1 / math.sqrt(2)
    return scale.inputs[0] is m["x"] and _scalar(want)(m["c"])


def _cube_ok(m: Match) -> bool:
    """x^3 as Pow(x, 3) or x * x * x."""
    cube = m["cube"]
    x = m["x"]
    if cube.op_type == "Pow":
        return cube.inputs[0] is x and _scalar(3.0)(cube.inputs[1])
    a, b = cube.inputs
    sq = b if a is x else a if b is x else None
    p = None if sq is None else sq.producer
    return (sq is not None and p is not None and p.op_type == "Mul" and list(p.inputs) == [x, x] and len(sq.uses) == 1
            and p.graph is m.graph and p not in m.nodes and _absorb(m, p))


def _absorb(m: Match, node: Node) -> bool:
    m.nodes.append(node)  # x * x inside x * x * x goes too
    return True


def _node(m: Match, op: str, domain: str = "", **attrs) -> list[Node]:
    if domain:
        m.graph.root.opset_imports.setdefault(domain, 1)
    x = m["x"]
    return [rebuilt(m.root, op_type=op, domain=domain, inputs=[x], outputs=[m.root.outputs[0]],
                    **{k: None for k in m.root.attrs}, **attrs)]


def _gelu(target: str):
    def rewrite(m: Match):
        if not _erf_scale_ok(m):
            return None
        if target == "onnx":
            return _node(m, "Gelu") if m.root.opset >= 20 else None
        return _node(m, "Gelu", MS_DOMAIN)
    return rewrite


def _gelu_tanh(target: str):
    def rewrite(m: Match):
        if not _cube_ok(m):
            return None
        if target == "onnx":
            return _node(m, "Gelu", approximate="tanh") if m.root.opset >= 20 else None
        return _node(m, "FastGelu", MS_DOMAIN)
    return rewrite


def _silu(target: str):
    def rewrite(m: Match):
        if target == "onnx":
            return _node(m, "Swish") if m.root.opset >= 24 else None
        return _node(m, "QuickGelu", MS_DOMAIN, alpha=1.0)
    return rewrite


def _clip_0_6(node: Node) -> bool:
    if node.opset < 11:
        return node.attrs.get("min") == 0.0 and node.attrs.get("max") == 6.0
    return (len(node.inputs) == 3 and node.inputs[1] is not None and node.inputs[2] is not None
            and _scalar(0.0)(node.inputs[1]) and _scalar(6.0)(node.inputs[2]))


_RELU6 = Pat("Clip", name="clip", uses=1, where=_clip_0_6)


def _over_6(clip: Pat) -> tuple[Pat, ...]:
    return (Pat("Div", inputs=(clip, Pat(where=_scalar(6.0))), where=_float),
            _mul(clip, Pat(where=_scalar(1 / 6)), where=_float))


def _hard_sigmoid(m: Match):
    """Clip(y, 0, 6) / 6 = HardSigmoid(y, 1/6, 0); with y = x + 3, HardSigmoid(x, 1/6, 0.5)."""
    if m.root.opset < 6:
        return None
    y = m["clip"].inputs[0]
    add = y.producer
    if (add is not None and add.op_type == "Add" and add.graph is m.graph and m.read_only_here(y, 1)
            and len(add.inputs) == 2):
        for i in (0, 1):
            if _scalar(3.0)(add.inputs[1 - i]) and add.inputs[i] is not None:
                m.nodes.append(add)
                m.bound["x"] = add.inputs[i]
                return _node(m, "HardSigmoid", alpha=1 / 6, beta=0.5)
    m.bound["x"] = y
    return _node(m, "HardSigmoid", alpha=1 / 6, beta=0.0)


def _hard_swish(m: Match):
    hs = m["hs"]
    if abs(hs.attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(hs.attrs.get("beta", 0.5) - 0.5) > 1e-6:
        return None
    return _node(m, "HardSwish") if m.root.opset >= 14 else None


def _rules(target: str) -> tuple[Rule, ...]:
    rules = [Rule(p, _gelu(target)) for p in _gelu_patterns(_ERF)]
    rules += [Rule(p, _gelu_tanh(target)) for p in _gelu_patterns(_TANH)]
    rules.append(Rule(_mul(X, Pat("Sigmoid", uses=1, inputs=(X,)), where=_float), _silu(target)))
    if target == "onnx":
        rules += [Rule(p, _hard_sigmoid) for p in _over_6(_RELU6)]
        rules.append(Rule(_mul(X, Pat("HardSigmoid", name="hs", uses=1, inputs=(X,)), where=_float), _hard_swish))
    return tuple(rules)


class FuseActivations(RewritePass):
    """Standard ONNX only; runs before fuse-conv, which takes HardSigmoid/HardSwish into a Conv."""

    name = "fuse-activations"
    level = 2
    rules = _rules("onnx")


class FuseActivationsContrib(RewritePass):
    name = "fuse-activations-contrib"
    level = 2
    emits_custom_ops = True
    rules = _rules("tuili")
