"""int8 execution: whether quantized models run on oneDNN's int8 kernels here, decided once per session.

On a CPU whose int8 dot product sums u8*s8 products exactly in int32 (``cpu.exact_int8_dot``: VNNI,
AMX) and a torch with oneDNN's int8 ops (``ops.int8.int8_available``), a session

* folds each ``DequantizeLinear -> Conv / MatMul [-> Relu] -> QuantizeLinear`` group of a QDQ model
  into QLinearConv / QLinearMatMul (``passes.qdq_fold``) before its other passes (which would fold
  the weights' DequantizeLinear into float constants), and
* runs QLinearConv / QLinearMatMul — the folded ones and those of QOperator models — on oneDNN with
  weights packed at plan time (``ops.int8.INT8_PREPARERS``), where their parameters fit.

Elsewhere (no VNNI/AMX: oneDNN's and onnxruntime's u8s8 paths saturate pairs of products at int16,
or no oneDNN) nothing is folded: QDQ graphs run as float convolutions on dequantized weights and the
QLinear ops on tuili's exact integer kernels. ``TUILI_CPU_MASK=avx512_vnni,avx_vnni,amx`` shows that
path on any machine.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuili.ir import Graph
from tuili.runtime import cpu


@dataclass(frozen=True)
class Int8Decision:
    """``enabled``: quantized models run on oneDNN's int8 kernels; ``reason``: why (not)."""

    enabled: bool
    reason: str


#: the ops int8 execution concerns: a graph without any of them never loads torch for it
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"})


def decide(graph: Graph | None = None) -> Int8Decision:
    """Whether this CPU and torch build run tuili's int8 kernels (see the module doc); for ``graph``,
    off at once when it has no quantized nodes."""
    if graph is not None and not any(n.op_type in QUANTIZED_OPS for n in graph.all_nodes()):
        return Int8Decision(False, "the model has no quantized nodes")
    feature = cpu.exact_int8_dot()
    if feature is None:
        return Int8Decision(False, f"this CPU has none of {', '.join(cpu.INT8_DOT)} (exact int32 sums of u8*s8 "
                                   f"products); QDQ runs in float, QLinear ops on exact integer kernels")
    from tuili.ops.int8 import int8_available

    missing = int8_available()
    if missing:
        return Int8Decision(False, missing)
    return Int8Decision(True, f"oneDNN int8 kernels (exact int32 sums via {feature})")


@dataclass
class Int8Kernels:
    """The planner's hook: ``prepare(op_type, domain, info)`` is the oneDNN int8 kernel of a node that
    has one and fits, else None; ``counts`` tallies those nodes by op type."""

    counts: Counter = field(default_factory=Counter)

    def prepare(self, op_type: str, domain: str, info: Any) -> Callable | None:
        from tuili.ops.int8 import INT8_PREPARERS

        make = INT8_PREPARERS.get(("" if domain == "ai.onnx" else domain, op_type))
        fn = make(info) if make is not None else None
        if fn is not None:
            self.counts[op_type if not domain else f"{domain}::{op_type}"] += 1
        return fn


def planner_hook(decision: Int8Decision) -> Int8Kernels | None:
    return Int8Kernels() if decision.enabled else None


def passes(decision: Int8Decision, opt_level: int) -> list:
    """The passes a session runs before its optimization level's pipeline: the QDQ fold, from level 2
    (the level that fuses), when the int8 kernels run here."""
    if not decision.enabled or opt_level < 2:
        return []
    from tuili.passes.qdq_fold import FoldQDQ

    return [FoldQDQ()]
