"""The pass manager: optimization levels O0..O3, run to a fixed point, with a report.

    from tuili.passes import optimize
    report = optimize(graph, level=2)      # rewrites ``graph`` in place; copy_graph() first to keep it
    print(report.summary())

Levels (each includes the one below):
  O0  nothing
  O1  eliminate no-ops, constant folding, common subexpressions, dead nodes   (standard ONNX ops only)
  O2  + fold BatchNormalization into Conv/ConvTranspose/Gemm, fold constant Mul/Add into Conv,
        Conv + Add/activation -> tuili::FusedConv, MatMul + Add -> Gemm / tuili::FusedMatMul,
        Gemm's constant B pre-transposed and alpha/beta pre-scaled
  O3  + layout: collapse Transpose/Transpose and Reshape/Reshape chains
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from tuili.errors import ConfigError, InvalidGraphError
from tuili.ir import Graph

from .base import TUILI_DOMAIN, Pass
from .batchnorm import FoldBatchNorm
from .constant_folding import ConstantFolding
from .conv_affine import FoldConvAffine
from .conv_fusion import FuseConv
from .cse import CommonSubexpressionElimination
from .eliminate import EliminateDeadNodes, EliminateNoOps
from .gemm_weights import PrecomputeGemmWeights
from .layout import CollapseReshapes, CollapseTransposes
from .matmul_fusion import FuseMatMulAdd

log = logging.getLogger(__name__)

MAX_LEVEL = 3
MAX_ROUNDS = 20


def passes_for_level(level: int, *, allow_custom_ops: bool = True) -> list[Pass]:
    """The passes of ``level`` in the order one round runs them.

    ``allow_custom_ops=False`` keeps the result runnable by any ONNX engine (no tuili-domain ops)."""
    if not isinstance(level, int) or not 0 <= level <= MAX_LEVEL:
        raise ConfigError(f"optimization level {level!r} is not one of 0, 1, 2, 3")
    out: list[Pass] = []
    if level >= 1:
        out += [EliminateNoOps(), ConstantFolding(), CommonSubexpressionElimination()]
    if level >= 3:
        out += [CollapseTransposes(), CollapseReshapes()]
    if level >= 2:
        out += [FoldBatchNorm(), FoldConvAffine()]
        if allow_custom_ops:
            out += [FuseConv()]
        out += [FuseMatMulAdd(allow_custom=allow_custom_ops), PrecomputeGemmWeights()]
    if level >= 1:
        out += [EliminateDeadNodes()]
    return out


@dataclass
class PassRecord:
    name: str
    round: int
    changed: bool
    seconds: float
    delta: dict[str, int]  # op -> change in count (only nonzero)


@dataclass
class Report:
    level: int
    before: Counter
    after: Counter = field(default_factory=Counter)
    records: list[PassRecord] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    def by_pass(self) -> dict[str, dict]:
        """pass name -> {"runs", "changed" (rounds it changed something), "delta" (ops), "seconds"}."""
        out: dict[str, dict] = {}
        for r in self.records:
            e = out.setdefault(r.name, {"runs": 0, "changed": 0, "delta": Counter(), "seconds": 0.0})
            e["runs"] += 1
            e["changed"] += int(r.changed)
            e["delta"].update(r.delta)
            e["seconds"] += r.seconds
        for e in out.values():
            e["delta"] = {k: v for k, v in e["delta"].items() if v}
        return out

    def summary(self) -> str:
        n0, n1 = sum(self.before.values()), sum(self.after.values())
        parts = [f"O{self.level}: {n0} -> {n1} nodes in {self.rounds} round(s), {self.seconds * 1e3:.1f} ms"]
        for name, e in self.by_pass().items():
            if e["changed"]:
                delta = ", ".join(f"{k} {v:+d}" for k, v in sorted(e["delta"].items()))
                parts.append(f"{name}: {delta or 'op counts unchanged'}")
        return "; ".join(parts)


def op_counts(graph: Graph) -> Counter:
    """op -> number of nodes, subgraphs included ("domain::Op" outside the default domain)."""
    return Counter((f"{n.domain}::{n.op_type}" if n.domain else n.op_type) for n in graph.all_nodes())


class PassManager:
    """Runs a list of passes in rounds until a round changes nothing (or ``max_rounds``).

    Each pass rewrites the root graph, then every subgraph (If/Loop/Scan bodies) as a graph of its
    own: values a body reads from an enclosing scope are uses there, so they are never removed."""

    def __init__(self, passes: list[Pass], *, level: int = -1, debug: bool = False, max_rounds: int = MAX_ROUNDS,
                 subgraphs: bool = True):
        self.passes = passes
        self.subgraphs = subgraphs
        self.level = level
        self.debug = debug
        self.max_rounds = max_rounds

    def run(self, graph: Graph) -> Report:
        if graph.parent is not None:
            raise InvalidGraphError(f"graph {graph.name!r} is a subgraph: optimize its root graph")
        start = time.perf_counter()
        report = Report(self.level, op_counts(graph))
        for rnd in range(1, self.max_rounds + 1):
            report.rounds = rnd
            any_change = False
            for p in self.passes:
                before = op_counts(graph)
                t0 = time.perf_counter()
                changed = bool(p.run(graph))
                if self.subgraphs:  # bodies of If/Loop/Scan, each a scope of its own
                    for sub in list(graph.subgraphs()):
                        changed = bool(p.run(sub)) or changed
                dt = time.perf_counter() - t0
                delta: dict[str, int] = {}
                if changed:
                    any_change = True
                    after = op_counts(graph)
                    delta = {k: after[k] - before[k] for k in set(before) | set(after) if after[k] != before[k]}
                    if self.debug:
                        try:
                            graph.validate()
                        except InvalidGraphError as e:
                            raise InvalidGraphError(f"pass {p.name!r} (round {rnd}) left an invalid graph: {e}") from e
                    log.debug("pass %s changed the graph: %s", p.name, delta)
                report.records.append(PassRecord(p.name, rnd, changed, dt, delta))
            if not any_change:
                break
        else:
            log.warning("optimizer stopped after %d rounds without reaching a fixed point", self.max_rounds)
        if any(n.domain == TUILI_DOMAIN for n in graph.all_nodes()):
            graph.opset_imports.setdefault(TUILI_DOMAIN, 1)
        report.after = op_counts(graph)
        report.seconds = time.perf_counter() - start
        log.debug("%s", report.summary())
        return report


def optimize(graph: Graph, level: int = 2, *, debug: bool = False, allow_custom_ops: bool = True) -> Report:
    """Optimize ``graph`` in place at ``level`` (0..3) and return the report."""
    return PassManager(passes_for_level(level, allow_custom_ops=allow_custom_ops), level=level, debug=debug).run(graph)


def optimized_copy(graph: Graph, level: int = 2) -> tuple[Graph, Report | None]:
    """(an optimized copy of ``graph``, its report); ``graph`` itself and None at level 0.

    Used by InferenceSession. An optimizer failure is logged and the unoptimized graph returned:
    a bug in a pass must not make a valid model unusable."""
    from .base import copy_graph

    passes = passes_for_level(level)  # a bad level raises ConfigError here
    if not level:
        return graph, None
    try:
        copy = copy_graph(graph)
        # with debug logging on (`tuili -v ...`), the graph is validated after every pass
        report = PassManager(passes, level=level, debug=log.isEnabledFor(logging.DEBUG)).run(copy)
    except Exception as e:  # noqa: BLE001
        log.warning("graph optimizer failed (%s: %s); running the model unoptimized", type(e).__name__, e)
        return graph, None
    log.debug("%s", report.summary())
    return copy, report
