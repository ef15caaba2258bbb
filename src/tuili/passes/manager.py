"""The pass manager: pipelines built from pass metadata, run to a fixed point, with a report.

    from tuili.passes import optimize
    report = optimize(graph, level=2)      # rewrites ``graph`` in place; copy_graph() first to keep it
    print(report.summary())

Levels (each includes the one below; a pass's class says its level, see ``PASSES``):
  O0  nothing
  O1  eliminate no-ops, constant folding, common subexpressions, dead nodes   (standard ONNX ops only)
  O2  + fold BatchNormalization into Conv/ConvTranspose/Gemm, fold constant Mul/Add into Conv,
        constant Reshape targets (the run-time shape computation dies), LayerNormalization from
        primitives, constant zero Pad into Conv, HardSigmoid/HardSwish (and Gelu/Swish where the
        opset has them) from primitives, Conv + Add/activation -> tuili::FusedConv, Gelu/SiLU ->
        com.microsoft Gelu/FastGelu/QuickGelu, MatMul/Softmax attention -> tuili::Attention,
        MatMul + Add -> Gemm / tuili::FusedMatMul, Gemm's constant B pre-transposed and alpha/beta
        pre-scaled
  O3  + layout: collapse Transpose/Transpose and Reshape/Reshape chains

Managers nest: a manager is a pass, so pipelines compose, and the report keeps every inner pass
(named "O2/fuse-conv"):

    PassManager([pipeline(2), InsertQDQ(), pipeline(1)], max_rounds=1).run(graph)
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuili.errors import ConfigError, InvalidGraphError
from tuili.ir import Graph

from .activation_fusion import FuseActivations, FuseActivationsContrib
from .attention_fusion import FuseAttention
from .base import TUILI_DOMAIN, Pass
from .batchnorm import FoldBatchNorm
from .constant_folding import ConstantFolding
from .conv_affine import FoldConvAffine
from .conv_fusion import FuseConv
from .cse import CommonSubexpressionElimination
from .eliminate import EliminateDeadNodes, EliminateNoOps
from .gemm_weights import PrecomputeGemmWeights
from .layernorm_fusion import FuseLayerNorm
from .layout import CollapseReshapes, CollapseTransposes
from .matmul_fusion import FuseGemm, FuseMatMulAdd
from .pad_conv import FoldPadConv
from .reshape_shape import ConstantReshapeShape

log = logging.getLogger(__name__)

MAX_LEVEL = 3
MAX_ROUNDS = 20

#: every pass of the levels, in the order one round runs them; each class declares its level
PASSES: tuple[type[Pass], ...] = (
    EliminateNoOps, ConstantFolding, CommonSubexpressionElimination,
    CollapseTransposes, CollapseReshapes,
    ConstantReshapeShape, FuseLayerNorm, FoldPadConv,
    FoldBatchNorm, FoldConvAffine, FuseActivations, FuseConv, FuseActivationsContrib,
    FuseAttention, FuseGemm, FuseMatMulAdd, PrecomputeGemmWeights,
    EliminateDeadNodes,
)


def passes_for_level(level: int, *, allow_custom_ops: bool = True) -> list[Pass]:
    """The passes of ``level`` in the order one round runs them.

    ``allow_custom_ops=False`` keeps the result runnable by any ONNX engine (no tuili-domain ops)."""
    if not isinstance(level, int) or not 0 <= level <= MAX_LEVEL:
        raise ConfigError(f"optimization level {level!r} is not one of 0, 1, 2, 3")
    return [cls() for cls in PASSES if cls.level <= level and (allow_custom_ops or not cls.emits_custom_ops)]


def pipeline(level: int, *, allow_custom_ops: bool = True, debug: bool = False) -> PassManager:
    """The manager of optimization level ``level``, named "O<level>"."""
    return PassManager(passes_for_level(level, allow_custom_ops=allow_custom_ops), name=f"O{level}", debug=debug)


@dataclass
class PassRecord:
    name: str  # the pass's name, "<manager>/<pass>" for a pass of a nested manager
    round: int  # of the manager that ran the pass
    changed: bool
    seconds: float
    delta: dict[str, int]  # op -> change in count (only nonzero)


@dataclass
class Report:
    """What a manager did. Truthy when it changed the graph, so a manager is a pass."""

    name: str
    before: Counter
    after: Counter = field(default_factory=Counter)
    records: list[PassRecord] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    def __bool__(self) -> bool:
        return self.changed

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
        parts = [f"{self.name}: {n0} -> {n1} nodes in {self.rounds} round(s), {self.seconds * 1e3:.1f} ms"]
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
    own: values a body reads from an enclosing scope are uses there, so they are never removed.
    Shapes are inferred first when a pass needs them and the graph has none. A manager in ``passes`` runs its own rounds
    (on the bodies too) as one step of this one; its passes' records join this manager's report.
    With ``debug``, the graph is validated after every pass that changed it."""

    def __init__(self, passes: list, *, name: str = "passes", debug: bool = False, max_rounds: int = MAX_ROUNDS,
                 subgraphs: bool = True):
        self.passes = list(passes)
        self.name = name
        self.debug = debug
        self.max_rounds = max_rounds
        self.subgraphs = subgraphs

    # metadata, so a manager is a pass like the ones it runs
    @property
    def level(self) -> int:
        return max((getattr(p, "level", 1) for p in self.passes), default=0)

    @property
    def emits_custom_ops(self) -> bool:
        return any(getattr(p, "emits_custom_ops", False) for p in self.passes)

    @property
    def needs_shapes(self) -> bool:
        return any(getattr(p, "needs_shapes", False) for p in self.passes)

    def run(self, graph: Graph) -> Report:
        if graph.parent is not None:
            raise InvalidGraphError(f"graph {graph.name!r} is a subgraph: optimize its root graph")
        start = time.perf_counter()
        if self.needs_shapes and not _has_types(graph):
            _infer_shapes(graph)
        report = Report(self.name, op_counts(graph))
        report.rounds = self._rounds(graph, report, "", self.debug)
        if any(n.domain == TUILI_DOMAIN for n in graph.all_nodes()):
            graph.opset_imports.setdefault(TUILI_DOMAIN, 1)
        report.after = op_counts(graph)
        report.seconds = time.perf_counter() - start
        log.debug("%s", report.summary())
        return report

    def _rounds(self, graph: Graph, report: Report, prefix: str, debug: bool) -> int:
        """Run rounds to a fixed point, recording each pass as ``prefix + name``; returns the rounds run."""
        for rnd in range(1, self.max_rounds + 1):
            any_change = False
            for p in self.passes:
                if isinstance(p, PassManager):
                    n = len(report.records)
                    p._rounds(graph, report, f"{prefix}{p.name}/", debug or p.debug)
                    any_change = any(r.changed for r in report.records[n:]) or any_change
                    continue
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
                    if debug:
                        try:
                            graph.validate()
                        except InvalidGraphError as e:
                            raise InvalidGraphError(f"pass {prefix}{p.name!r} (round {rnd}) left an invalid graph: "
                                                    f"{e}") from e
                    log.debug("pass %s%s changed the graph: %s", prefix, p.name, delta)
                report.records.append(PassRecord(prefix + p.name, rnd, changed, dt, delta))
            if not any_change:
                return rnd
        log.warning("%s stopped after %d rounds without reaching a fixed point", self.name, self.max_rounds)
        return self.max_rounds


def _has_types(graph: Graph) -> bool:
    """Every node output has a dtype: shapes were inferred already (by the session, say)."""
    return all(v.dtype is not None for n in graph.nodes for v in n.outputs if v.name)


def _infer_shapes(graph: Graph) -> None:
    from tuili.ir import infer_shapes

    try:
        infer_shapes(graph)  # shapes let more passes prove their rewrites legal
    except Exception as e:  # noqa: BLE001
        log.warning("shape inference failed, optimizing without shapes: %s", e)


def optimize(graph: Graph, level: int = 2, *, debug: bool = False, allow_custom_ops: bool = True) -> Report:
    """Optimize ``graph`` in place at ``level`` (0..3) and return the report."""
    return pipeline(level, allow_custom_ops=allow_custom_ops, debug=debug).run(graph)


def optimize_for_run(graph: Graph, level: int = 2, before: Sequence[Pass] = (), *,
                     in_place: bool = False) -> tuple[Graph | None, Report | None]:
    """(the graph to run, its report): an optimized copy of ``graph``, or with ``in_place`` ``graph``
    itself rewritten (for a caller that owns it: no copy of every weight); ``graph`` and None at
    level 0. ``before``: passes run once ahead of the pipeline (the session's CPU-dependent QDQ fold).

    Used by InferenceSession. An optimizer failure is logged and the unoptimized graph returned (a
    bug in a pass must not make a valid model unusable) — except in place, where the graph may be
    half rewritten: then (None, None), and the caller reloads the model."""
    from .base import copy_graph

    # with debug logging on (`tuili -v ...`), the graph is validated after every pass
    manager = pipeline(level, debug=log.isEnabledFor(logging.DEBUG))  # a bad level raises ConfigError here
    if not level:
        return graph, None
    try:
        target = graph if in_place else copy_graph(graph)
        for p in before:
            p.run(target)
        report = manager.run(target)
    except Exception as e:  # noqa: BLE001
        log.warning("graph optimizer failed (%s: %s); running the model unoptimized", type(e).__name__, e)
        return (None, None) if in_place else (graph, None)
    log.debug("%s", report.summary())
    return target, report
