"""Precision policy: which nodes of a plan run in bf16, decided once per session from the CPU.

``decide(requested)`` turns a session's ``precision`` argument into a ``Decision``:

* ``"fp32"``: every node float32.
* ``"bf16"``: every node tuili has a bf16 kernel for (``ops.bf16.BF16_PREPARERS``: Conv,
  tuili::FusedConv, MatMul / tuili::FusedMatMul / Gemm with constant weights) runs on bf16 operands
  with float32 accumulation through oneDNN. Refused on a CPU without native bf16 (AVX512_BF16 or
  AMX-BF16): oneDNN would emulate it, slower than float32.
* ``"auto"``: bf16 for the ops marked safe below, only on a CPU with native bf16; float32 elsewhere,
  with the reason.

Only multiply-accumulate ops are marked safe: their operands are rounded to bf16 (8 significant
bits, relative error u = 2^-8 each, ~2u per product) while the sums stay float32, so a dot product
drifts by at most 2u * sum|x_i w_i| however long it is, plus u * |y| when oneDNN rounds its result
to bf16 before the cast back to float32 (tests/ops/test_bf16_kernels.py checks exactly this bound). Ops that divide, exponentiate or
normalize (Softmax, LayerNormalization, Attention's scores) stay float32. The model's input and
output dtypes never change: each bf16 kernel casts at its own boundaries.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuili.errors import ConfigError
from tuili.runtime import cpu

PRECISIONS = ("fp32", "bf16", "auto")
#: CPU features that execute bf16 dot products natively (either is enough)
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")
#: (domain, op type) that `auto` runs in bf16: multiply-accumulate ops with float32 accumulation
SAFE_OPS = frozenset({("", "Conv"), ("tuili", "FusedConv"), ("", "MatMul"), ("tuili", "FusedMatMul"),
                      ("", "Gemm")})


def native_bf16() -> str | None:
    """The CPU feature giving native bf16 dot products, or None."""
    return next((f for f in NATIVE_BF16 if cpu.has(f)), None)


@dataclass(frozen=True)
class Decision:
    """What a session runs: ``precision`` ("fp32" or "bf16"), the ops allowed in bf16 and why."""

    requested: str
    precision: str
    ops: frozenset[tuple[str, str]]
    reason: str


def decide(requested: str) -> Decision:
    """The precision a session asking for ``requested`` runs at, on this CPU (see the module doc)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return Decision(requested, "fp32", frozenset(), "requested")
    from tuili.ops._torch import bf16_available
    from tuili.ops.bf16 import BF16_PREPARERS

    feature = native_bf16()
    missing = None if feature else f"this CPU has neither {' nor '.join(NATIVE_BF16)} (native bf16)"
    missing = missing or bf16_available()
    if requested == "bf16":
        if missing:
            raise ConfigError(f"precision 'bf16' refused: {missing}; bf16 would be emulated, slower than fp32. "
                              f"Use precision='fp32' or 'auto' (which picks fp32 here)")
        return Decision(requested, "bf16", frozenset(BF16_PREPARERS), f"requested; native via {feature}")
    if missing:
        return Decision(requested, "fp32", frozenset(), f"auto: fp32 because {missing}")
    return Decision(requested, "bf16", SAFE_OPS & frozenset(BF16_PREPARERS),
                    f"auto: bf16 for {', '.join(sorted(op for _, op in SAFE_OPS))} (native via {feature})")


@dataclass
class Bf16Kernels:
    """The planner's hook for one session: ``prepare(node, info)`` is a bf16 kernel for a node the
    decision allows and tuili can run in bf16, else None; ``counts`` tallies the bf16 nodes by op type."""

    decision: Decision
    counts: Counter = field(default_factory=Counter)

    def prepare(self, op_type: str, domain: str, info: Any) -> Callable | None:
        key = ("" if domain == "ai.onnx" else domain, op_type)
        if key not in self.decision.ops:
            return None
        from tuili.ops.bf16 import BF16_PREPARERS

        fn = BF16_PREPARERS[key](info)
        if fn is not None:
            self.counts[op_type if not key[0] else f"{key[0]}::{op_type}"] += 1
        return fn


def planner_hook(decision: Decision) -> Bf16Kernels | None:
    """What the planner takes for ``decision``: None when nothing runs in bf16."""
    return Bf16Kernels(decision) if decision.precision == "bf16" else None
