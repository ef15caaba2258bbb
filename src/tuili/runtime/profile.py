"""Per-step profile of tuili's engine, collected through the executor's step hook.

    prof = profile(session, feeds, runs=10)     # or profile(plan, [feed, ...]) in plan input order
    print(prof.table())                         # markdown: the slowest steps
    prof.by(lambda s: s.op_type)                # {op type: median seconds per run}

Each plan step gets one ``StepProfile`` (op type, node name, input and output shapes, wall time of
each timed run). A step that runs a subgraph or function body is timed as a whole.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuili.errors import ConfigError
from tuili.runtime import executor
from tuili.runtime.planner import Plan

if TYPE_CHECKING:
    from tuili.runtime.session import InferenceSession

Shape = tuple[int, ...] | None  # None: not a tensor (or an omitted input)


@dataclass
class StepProfile:
    index: int                       # position in the plan
    op_type: str
    node: str                        # node name ("" for an unnamed node)
    input_shapes: tuple[Shape, ...] = ()
    output_shapes: tuple[Shape, ...] = ()
    seconds: list[float] = field(default_factory=list)  # one per timed run

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0


@dataclass
class Profile:
    steps: list[StepProfile]
    runs: int

    @property
    def total(self) -> float:
        """Median over runs of the summed step times (kernel time; the loop's own cost excluded)."""
        return statistics.median(sum(s.seconds[r] for s in self.steps) for r in range(self.runs)) if self.runs else 0.0

    def by(self, key: Callable[[StepProfile], str]) -> dict[str, float]:
        """Seconds per group of steps (``key`` names a step's group): the median over runs of each
        group's summed time, slowest group first."""
        groups: dict[str, list[StepProfile]] = {}
        for s in self.steps:
            groups.setdefault(key(s), []).append(s)
        out = {k: statistics.median(sum(s.seconds[r] for s in members) for r in range(self.runs)) if self.runs else 0.0
               for k, members in groups.items()}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def table(self, top: int = 20) -> str:
        """Markdown table of the ``top`` slowest steps, with their share of the total."""
        total = self.total or 1.0
        lines = ["| # | op type | node | output shapes | ms | share |", "|---:|---|---|---|---:|---:|"]
        for s in sorted(self.steps, key=lambda s: -s.median)[:top]:
            shapes = ", ".join("-" if sh is None else "x".join(map(str, sh)) or "scalar" for sh in s.output_shapes)
            lines.append(f"| {s.index} | {s.op_type} | {s.node or '-'} | {shapes} | {s.median * 1e3:.3f} | "
                         f"{s.median / total:.0%} |")
        return "\n".join(lines)


def profile(target: InferenceSession | Plan, feeds: dict[str, Any] | Sequence[Any], runs: int = 10,
            warmup: int = 1) -> Profile:
    """Run ``target`` ``warmup`` + ``runs`` times and time each step of the timed runs. A session
    takes feeds by name (checked as ``run`` checks them); a Plan takes them in its input order."""
    if runs < 1 or warmup < 0:
        raise ConfigError(f"profile needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if isinstance(target, Plan):
        plan = target
        ordered = list(feeds)

        def execute(hook):
            return executor.run(plan, ordered, hook=hook)
    else:
        if target.plan is None:
            raise ConfigError(f"profile needs a session on the tuili engine; this one runs on {target.engine}: "
                              f"profile onnxruntime with its SessionOptions.enable_profiling")
        plan = target.plan
        ordered = target._ordered_feeds(dict(feeds))

        def execute(hook):
            return target._execute(plan, ordered, hook)

    records = [StepProfile(i, s.op_type, s.node_name) for i, s in enumerate(plan.steps)]
    index = {id(s): i for i, s in enumerate(plan.steps)}

    def hook(step, inputs: tuple, result: Any, seconds: float) -> None:
        rec = records[index[id(step)]]
        if not rec.seconds:
            rec.input_shapes = tuple(_shape(v) for v in inputs)
            rec.output_shapes = tuple(_shape(v) for v in (result if type(result) is tuple else (result,)))
        rec.seconds.append(seconds)

    for _ in range(warmup):
        execute(None)
    for _ in range(runs):
        execute(hook)
    return Profile(records, runs)


def _shape(v: Any) -> Shape:
    shape = getattr(v, "shape", None)
    return tuple(shape) if shape is not None else None
