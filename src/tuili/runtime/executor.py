"""Executor: runs a Plan, a flat list of pre-planned steps over numbered slots.

    outputs = run(plan, feeds)                 # feeds in the plan's input order (None: not fed)
    outputs = run(plan, feeds, hook=hook)      # hook(step, inputs, result, seconds) after each step

The loop is the same with or without a hook: a hook is attached by wrapping each step's kernel for
that run, so a run without one pays nothing per step. The hook sees the plan's own steps; a step
that runs a subgraph or function body is one step (its body's steps are not reported).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tuili.errors import KernelError, TuiliError
from tuili.ops.registry import KernelContext, bind_scratch

if TYPE_CHECKING:
    from tuili.runtime.planner import Plan, Step

#: hook(step, inputs, result, seconds): the step, its input values (None: omitted), what its kernel
#: returned (a tuple for several outputs) and the kernel's wall time
StepHook = Callable[["Step", tuple, Any, float], None]


def run(plan: Plan, feeds: Sequence[Any], captured: Sequence[Any] = (), hook: StepHook | None = None) -> list[Any]:
    """Run ``plan`` on ``feeds`` (and the outer values its subgraph reads, ``captured``)."""
    steps = plan.steps if hook is None else [_observed(step, hook) for step in plan.steps]
    env: list[Any] = [None] * plan.n_slots
    for slot, value in plan.consts:
        env[slot] = value
    for slot, value in zip(plan.inputs, feeds):
        if value is not None:  # None: not fed (an initializer-backed input keeps its default)
            env[slot] = value
    for slot, value in zip(plan.capture_slots, captured):
        env[slot] = value
    step = None
    outer_scratch = bind_scratch(plan.scratch)
    try:
        for step in steps:
            args = [env[i] if i >= 0 else None for i in step.args]
            ctx = step.ctx
            if ctx is not None:
                if step.bodies is not None:  # subgraphs: bind this call's outer values
                    ctx = _bind(ctx, step.bodies, [env[i] for i in step.captures])
                result = step.fn(ctx, *args, **step.attrs)
            else:
                result = step.fn(*args, **step.attrs)
            # A tuple holds one value per output; anything else (an array, a list = a sequence,
            # None = an empty optional) is the first output.
            if type(result) is not tuple:
                result = (result,)
            for slot, value in zip(step.outs, result):
                if slot >= 0:
                    env[slot] = value
            for i in step.free:
                env[i] = None
    except TuiliError as e:
        if step is None or step.label in str(e):
            raise
        raise type(e)(f"{step.label}: {e}") from e
    except Exception as e:  # noqa: BLE001 - a kernel bug or bad data: name the node
        if step is None:
            raise
        shapes = ", ".join(_describe(env[i]) if i >= 0 else "-" for i in step.args)
        raise KernelError(f"{step.label} failed on inputs ({shapes}): {type(e).__name__}: {e}") from e
    finally:
        bind_scratch(outer_scratch)
    return [env[i] for i in plan.outputs]


def _describe(v: Any) -> str:
    """A value's type and shape as errors show it: ``float32[1, 3]``."""
    if isinstance(v, np.ndarray):
        return f"{v.dtype}{list(v.shape)}"
    if isinstance(v, list):
        return f"sequence[{len(v)}]"
    return type(v).__name__


def _bind(ctx: KernelContext, bodies: dict, captured: list[Any]) -> KernelContext:
    """A per-call context whose run_subgraph sees this call's outer values."""

    def run_subgraph(graph, inputs: Sequence[Any] | dict[str, Any]) -> list[Any]:
        plan, index = bodies[id(graph)]
        if isinstance(inputs, dict):  # by name -> in the body's input order
            inputs = [inputs.get(v.name) for v in graph.inputs]
        return run(plan, inputs, [captured[i] for i in index])

    return KernelContext(ctx.op_type, ctx.opset, ctx.node_name, ctx.num_outputs, run_subgraph, ctx.extra)


def _observed(step: Step, hook: StepHook) -> Step:
    """A copy of ``step`` whose kernel call is timed and reported to ``hook``."""
    fn, clock, skip = step.fn, time.perf_counter, 1 if step.ctx is not None else 0

    def call(*args: Any, **attrs: Any) -> Any:
        t0 = clock()
        result = fn(*args, **attrs)
        seconds = clock() - t0
        hook(step, args[skip:], result, seconds)
        return result

    return dataclasses.replace(step, fn=call)
