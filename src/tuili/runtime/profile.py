"""Per-step profile of tuili's engine, collected through the executor's step hook.

    prof = profile(session, feeds, runs=10)     # or profile(plan, [feed, ...]) in plan input order
    print(prof.table())                         # markdown: the slowest steps
    prof.by(lambda s: s.op_type)                # {op type: median seconds per run}

Each plan step gets one ``StepProfile`` (op type, node name, attributes, input and output shapes and
bytes, start and wall time of each timed run). A step that runs a subgraph or function body is timed
as a whole. ``prof.memory()`` is the arena plan for the tensor sizes seen (runtime.memory);
``prof.chrome_trace()`` the timed runs as Chrome-trace events (Perfetto, chrome://tracing), in the
layout of ``InferenceSession.end_profiling``.
"""
from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuili.errors import ConfigError
from tuili.runtime import executor
from tuili.runtime.memory import MemoryPlan, plan_memory
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
    attrs: dict[str, Any] = field(default_factory=dict)
    input_nbytes: tuple[int, ...] = ()   # 0: not a tensor
    output_nbytes: tuple[int, ...] = ()
    starts_ns: list[int] = field(default_factory=list)  # perf_counter_ns at the start of each timed call

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0


def trace_event(cat: str, name: str, start_ns: int, dur_ns: int, origin_ns: int, tid: int, args: dict) -> dict:
    """One complete ("X") Chrome-trace event in onnxruntime's profile layout, microseconds from ``origin_ns``."""
    return {"cat": cat, "pid": os.getpid(), "tid": tid, "dur": dur_ns // 1000, "ts": (start_ns - origin_ns) // 1000,
            "ph": "X", "name": name, "args": args}


@dataclass
class Profile:
    steps: list[StepProfile]
    runs: int
    plan: Plan | None = None
    runs_ns: list[tuple[int, int]] = field(default_factory=list)  # (start, end) of each timed run

    def memory(self) -> MemoryPlan:
        """The arena plan of the profiled plan for the tensor sizes of the profiled runs."""
        if self.plan is None:
            raise ConfigError("this profile has no plan to plan memory for")
        sizes = {slot: n for step, rec in zip(self.plan.steps, self.steps)
                 for slot, n in zip(step.outs, rec.output_nbytes) if slot >= 0}
        return plan_memory(self.plan, sizes)

    def chrome_trace(self) -> list[dict]:
        """Complete ("X") events: one "Session" event per timed run and one "Node" event per step
        and run, times in microseconds from the first run (onnxruntime's profile layout)."""
        if not self.runs_ns:
            return []
        origin, tid = self.runs_ns[0][0], threading.get_ident()

        def event(cat: str, name: str, start: int, dur: int, args: dict) -> dict:
            return trace_event(cat, name, start, dur, origin, tid, args)

        events = [event("Session", "model_run", a, b - a, {}) for a, b in self.runs_ns]
        for s in self.steps:
            for start, sec in zip(s.starts_ns, s.seconds):
                events.append(event("Node", f"{s.node or s.op_type}_kernel_time", start, int(sec * 1e9),
                                    {"op_name": s.op_type, "provider": "tuili",
                                     "output_type_shape": [list(sh) if sh is not None else None
                                                           for sh in s.output_shapes]}))
        return sorted(events, key=lambda e: e["ts"])

    def write_trace(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.chrome_trace(), f)

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

    records = [StepProfile(i, s.op_type, s.node_name, attrs=s.attrs) for i, s in enumerate(plan.steps)]
    index = {id(s): i for i, s in enumerate(plan.steps)}
    clock = time.perf_counter_ns

    def hook(step, inputs: tuple, result: Any, seconds: float) -> None:
        rec = records[index[id(step)]]
        if not rec.seconds:
            outputs = result if type(result) is tuple else (result,)
            rec.input_shapes = tuple(_shape(v) for v in inputs)
            rec.output_shapes = tuple(_shape(v) for v in outputs)
            rec.input_nbytes = tuple(_nbytes(v) for v in inputs)
            rec.output_nbytes = tuple(_nbytes(v) for v in outputs)
        rec.seconds.append(seconds)
        rec.starts_ns.append(clock() - int(seconds * 1e9))

    for _ in range(warmup):
        execute(None)
    spans = []
    for _ in range(runs):
        t0 = clock()
        execute(hook)
        spans.append((t0, clock()))
    return Profile(records, runs, plan, spans)


def _shape(v: Any) -> Shape:
    shape = getattr(v, "shape", None)
    return tuple(shape) if shape is not None else None


def _nbytes(v: Any) -> int:
    return int(getattr(v, "nbytes", 0) or 0) if hasattr(v, "shape") else 0
