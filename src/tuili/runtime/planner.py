"""Planner: a Graph becomes a Plan, a flat list of kernel calls over numbered slots.

Planning happens once per session: kernels are chosen, constants placed, every value gets a slot,
and memory.plan_releases marks where each value dies. Subgraphs (If/Loop/Scan bodies) are planned
the same way; the values they read from enclosing scopes become captured slots of the step that
runs them. Ops without a kernel but with an ONNX function body (ir.op_function) become a
FunctionCall, which plans the body per input types the first time it runs.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from tuili import dtypes
from tuili.errors import UnsupportedOpError
from tuili.ir import Graph, Node, OpFunction, Value, op_function
from tuili.ops.registry import KernelContext, NodeInfo, Scratch, get_kernel, lookup, preparer
from tuili.runtime import executor
from tuili.runtime.memory import SHARED_SCRATCH, plan_releases

if TYPE_CHECKING:
    from tuili.runtime.int8 import Int8Kernels
    from tuili.runtime.precision import Bf16Kernels


@dataclass
class Step:
    fn: Callable[..., Any]
    args: tuple[int, ...]            # input slots, -1 for an omitted optional input
    outs: tuple[int, ...]            # output slots, -1 for an unused optional output
    attrs: dict[str, Any]
    label: str                       # how errors name the node
    op_type: str
    ctx: KernelContext | None = None  # passed first when the kernel asks for it
    captures: tuple[int, ...] = ()   # slots of outer values the node's subgraphs read
    # id(subgraph) -> (its plan, indexes into captures of the outer values it reads); None: no subgraphs
    bodies: dict[int, tuple[Plan, tuple[int, ...]]] | None = None
    free: tuple[int, ...] = ()       # slots no longer needed after this step (memory.plan_releases)
    node_name: str = ""


@dataclass
class Plan:
    n_slots: int
    inputs: list[int]                # slots of the graph inputs, in order
    outputs: list[int]               # slots of the graph outputs, in order
    consts: list[tuple[int, Any]]    # (slot, value) set before the first step
    steps: list[Step]
    captures: list[Value] = field(default_factory=list)  # outer values read, bound to capture_slots
    capture_slots: list[int] = field(default_factory=list)
    scratch: Scratch = SHARED_SCRATCH  # where the kernels' temporaries come from while it runs
    names: dict[int, str] = field(default_factory=dict)  # slot -> the value's name (reports)


class Planner:
    """Builds the Plan of one graph (and, recursively, of its subgraphs)."""

    def __init__(self, graph: Graph, scratch: Scratch = SHARED_SCRATCH, prepare: bool = True,
                 bf16: Bf16Kernels | None = None, int8: Int8Kernels | None = None,
                 tuning: TuningHook | None = None):
        """``prepare=False`` keeps every node on its generic kernel (no preparers: nothing pre-packed).
        ``bf16`` (``runtime.precision``) gives the bf16 kernels of the nodes the precision policy allows,
        ``int8`` (``runtime.int8``) the oneDNN int8 kernels of quantized nodes. ``tuning``: nodes where
        the generic and the prepared kernel can both run are chosen between per input shape by
        measurement (``runtime.tuning``)."""
        self.graph = graph
        self.scratch = scratch
        self.prepare = prepare
        self.bf16 = bf16
        self.int8 = int8
        self.tuning = tuning
        self.slot_of: dict[int, int] = {}   # id(Value) -> slot
        self.n_slots = 0
        self.captures: list[Value] = []
        self.capture_slots: list[int] = []
        self.names: dict[int, str] = {}

    def _new_slot(self) -> int:
        self.n_slots += 1
        return self.n_slots - 1

    def slot(self, v: Value) -> int:
        s = self.slot_of.get(id(v))
        if s is None:
            if v.graph is self.graph and v.tensor is None:
                raise UnsupportedOpError(f"value {v.name!r} is read before it is produced")
            s = self._new_slot()
            self.slot_of[id(v)] = s
            self.names[s] = v.name
            if v.graph is not self.graph:  # an outer-scope value: captured at run time
                self.captures.append(v)
                self.capture_slots.append(s)
        return s

    def build(self) -> Plan:
        g = self.graph
        consts: list[tuple[int, Any]] = []
        inputs = [self._assign(v) for v in g.inputs]
        for v in g.initializers.values():
            if id(v) not in self.slot_of:
                consts.append((self._assign(v), v.const))
            else:  # an initializer that is also a graph input: its value is the default feed
                consts.append((self.slot_of[id(v)], v.const))
        steps = [self._step(node) for node in g.nodes]
        outputs = [self.slot(v) for v in g.outputs]
        consts = _release_absorbed(consts, steps, outputs)
        plan = Plan(self.n_slots, inputs, outputs, consts, steps, self.captures, self.capture_slots, self.scratch,
                    self.names)
        plan_releases(plan)
        return plan

    def _assign(self, v: Value) -> int:
        s = self._new_slot()
        self.slot_of[id(v)] = s
        self.names[s] = v.name
        return s

    def _step(self, node: Node) -> Step:
        args = tuple(self.slot(v) if v is not None else -1 for v in node.inputs)
        outs = tuple(self._assign(v) if v.name or v.uses else -1 for v in node.outputs)
        label = node.label
        kernel = lookup(node.op_type, node.domain, node.opset)
        if kernel is None:
            function = op_function(node)
            if function is not None:
                return Step(FunctionCall(function, self.scratch), args, outs, {}, label, node.op_type,
                            node_name=node.name)
            kernel = get_kernel(node.op_type, node.domain, node.opset, node.name)  # raises "unsupported op"
        ctx = None
        captures: list[int] = []
        bodies = None
        subgraphs = list(node.subgraphs())
        if subgraphs:
            if not kernel.wants_ctx:
                raise UnsupportedOpError(f"{label}: kernel {kernel.name} takes subgraphs but no context")
            bodies = {}
            for sub in subgraphs:
                sub_plan = Planner(sub, self.scratch, self.prepare, self.bf16, self.int8, self.tuning).build()
                index = []
                for v in sub_plan.captures:
                    captures.append(self.slot(v))
                    index.append(len(captures) - 1)
                bodies[id(sub)] = (sub_plan, tuple(index))
        if kernel.wants_ctx:
            ctx = KernelContext(node.op_type, node.opset, node.name, len(node.outputs))
        fn = kernel.fn
        if bodies is None and self.prepare:  # pre-pack weights / pick a library for this node, once
            prepare = preparer(fn)
            hooks = [h for h in (self.bf16, self.int8) if h is not None]
            info = node_info(node) if prepare is not None or hooks else None
            special = None
            for hook in hooks:  # the session's policies first (bf16, int8), then the kernel's own preparer
                special = special or hook.prepare(node.op_type, node.domain, info)
            if special is None and prepare is not None:
                special = prepare(info)
            if special is not None and self.tuning is not None and not getattr(special, "absorbs", ()):
                special = self.tuning.wrap(node, label, fn, special)
            fn = special or fn
        return Step(fn, args, outs, dict(node.attrs), label, node.op_type, ctx, tuple(captures), bodies,
                    node_name=node.name)


@dataclass(frozen=True)
class TuningHook:
    """The planner's side of ``runtime.tuning``: ``tune`` measures at new shapes (else recorded choices
    or the prepared kernel), ``threads`` the session's thread count (part of every choice's key)."""

    tune: bool
    threads: int

    def wrap(self, node: Node, label: str, generic: Callable, special: Callable) -> Callable:
        from tuili.runtime.tuning import GENERIC, Tunable

        attrs = ", ".join(f"{k}={v!r}" for k, v in sorted(node.attrs.items()))
        where = f"{node.domain or 'ai.onnx'}::{node.op_type} v{node.opset} ({attrs})"
        name = getattr(special, "__name__", "prepared")
        return Tunable(label, where, {GENERIC: generic, name: special}, name, self.tune, lambda: self.threads)


def _release_absorbed(consts: list[tuple[int, Any]], steps: list[Step], outputs: list[int]) -> list[tuple[int, Any]]:
    """Constants that only kernels holding their own packed copy read (a prepared kernel's
    ``absorbs``: the input positions it never computes with) are replaced by a zero-memory stand-in of
    the same shape and dtype, so a plan does not keep every weight twice."""
    readers: dict[int, list[bool]] = {}
    for step in steps:
        absorbs = getattr(step.fn, "absorbs", ())
        for i, slot in enumerate(step.args):
            readers.setdefault(slot, []).append(i in absorbs)
        for slot in step.captures:
            readers.setdefault(slot, []).append(False)
    kept = set(outputs)
    released = []
    for slot, value in consts:
        if isinstance(value, np.ndarray) and slot not in kept and all(readers.get(slot, [False])):
            value = np.broadcast_to(np.zeros((), value.dtype), value.shape)
        released.append((slot, value))
    return released


def node_info(node: Node) -> NodeInfo:
    """What a kernel's preparer may specialise on: constant inputs, static shapes and dtypes."""

    def dtype(v: Value | None) -> np.dtype | None:
        try:
            return dtypes.from_onnx(v.dtype).to_numpy() if v is not None and v.dtype else None
        except dtypes.UnknownDTypeError:
            return None

    inputs = node.inputs
    return NodeInfo(
        node.op_type, node.opset, node.name,
        given=tuple(v is not None for v in inputs),
        consts=tuple(v.const if v is not None and v.tensor is not None else None for v in inputs),
        shapes=tuple(None if v is None or v.shape is None else tuple(v.shape) for v in inputs),
        dtypes=tuple(dtype(v) for v in inputs),
        attrs=dict(node.attrs),
    )


class FunctionCall:
    """Runs a node through its ONNX function body; one nested plan per input-type signature."""

    def __init__(self, function: OpFunction, scratch: Scratch):
        self.function = function
        self.scratch = scratch
        self.plans: dict[tuple, Plan] = {}
        self.lock = threading.Lock()

    def __call__(self, *inputs: Any) -> tuple:
        key = tuple(_type_key(x) for x in inputs)
        plan = self.plans.get(key)
        if plan is None:
            with self.lock:
                plan = self.plans.get(key)
                if plan is None:
                    body = self.function.instantiate([_type_proto_of(x) for x in inputs])
                    plan = self.plans[key] = Planner(body, self.scratch).build()
        return tuple(executor.run(plan, inputs))


def _type_key(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.dtype.str, x.ndim
    if isinstance(x, list):
        return "seq", tuple(_type_key(e) for e in x[:1])
    return type(x).__name__


def _type_proto_of(x: Any) -> onnx.TypeProto:
    if isinstance(x, np.ndarray):
        return onnx.helper.make_tensor_type_proto(onnx.helper.np_dtype_to_tensor_dtype(x.dtype), list(x.shape))
    if isinstance(x, list) and x:
        return onnx.helper.make_sequence_type_proto(_type_proto_of(x[0]))
    return onnx.TypeProto()
