"""Planner and executor: a Graph becomes a flat list of kernel calls over numbered slots.

Planning happens once per session: kernels are resolved, constants placed, every value gets a slot,
and each step knows which slots die after it (so intermediate arrays are released as early as
possible). Running is a tight loop over the steps. Subgraphs (If/Loop/Scan bodies) are planned the
same way; the values they read from enclosing scopes become captured slots of the step that runs them.
Ops without a kernel but with an ONNX function body (schema or model-local) are expanded into a
nested plan, per input dtypes, the first time they run.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from tuili.errors import KernelError, TuiliError, UnsupportedOpError
from tuili.ir.attributes import decode_attribute
from tuili.ir.core import Graph, Node, Value
from tuili.ops.registry import Kernel, KernelContext, get_kernel, lookup

log = logging.getLogger(__name__)


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
    free: tuple[int, ...] = ()       # slots no longer needed after this step


@dataclass
class Plan:
    n_slots: int
    inputs: list[int]                # slots of the graph inputs, in order
    outputs: list[int]               # slots of the graph outputs, in order
    consts: list[tuple[int, Any]]    # (slot, value) set before the first step
    steps: list[Step]
    captures: list[Value] = field(default_factory=list)  # outer values read, bound to capture_slots
    capture_slots: list[int] = field(default_factory=list)

    def run(self, feeds: Sequence[Any], captured: Sequence[Any] = ()) -> list[Any]:
        env: list[Any] = [None] * self.n_slots
        for slot, value in self.consts:
            env[slot] = value
        for slot, value in zip(self.inputs, feeds):
            if value is not None:  # None: not fed (an initializer-backed input keeps its default)
                env[slot] = value
        for slot, value in zip(self.capture_slots, captured):
            env[slot] = value
        step = None
        try:
            for step in self.steps:
                args = [env[i] if i >= 0 else None for i in step.args]
                if step.ctx is not None:
                    ctx = step.ctx
                    if "plans" in ctx.extra:  # subgraphs: bind this call's outer values
                        ctx = _bind(ctx, [env[i] for i in step.captures])
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
        return [env[i] for i in self.outputs]


def _describe(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"{v.dtype}{list(v.shape)}"
    if isinstance(v, list):
        return f"sequence[{len(v)}]"
    return type(v).__name__


def _bind(ctx: KernelContext, captured: list[Any]) -> KernelContext:
    """A per-call context whose run_subgraph sees this call's outer values."""
    plans: dict[int, Plan] = ctx.extra["plans"]

    def run_subgraph(graph: Graph, inputs: Sequence[Any] | dict[str, Any]) -> list[Any]:
        plan = plans[id(graph)]
        if isinstance(inputs, dict):  # by name -> in the body's input order
            inputs = [inputs.get(v.name) for v in graph.inputs]
        return plan.run(inputs, [captured[i] for i in ctx.extra["capture_index"][id(graph)]])

    return KernelContext(ctx.op_type, ctx.opset, ctx.node_name, ctx.num_outputs, run_subgraph, ctx.extra)


class Planner:
    """Builds the Plan of one graph (and, recursively, of its subgraphs)."""

    def __init__(self, graph: Graph, functions: dict[tuple[str, str], onnx.FunctionProto] | None = None):
        self.graph = graph
        self.functions = functions if functions is not None else {
            (f.domain, f.name): f for f in graph.root.functions}
        self.slot_of: dict[int, int] = {}   # id(Value) -> slot
        self.n_slots = 0
        self.captures: list[Value] = []
        self.capture_slots: list[int] = []

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
            if v.graph is not self.graph:  # an outer-scope value: captured at run time
                self.captures.append(v)
                self.capture_slots.append(s)
        return s

    def build(self) -> Plan:
        g = self.graph
        consts: list[tuple[int, Any]] = []
        inputs = [self._assign(v) for v in g.inputs]
        for name, v in g.initializers.items():
            if id(v) not in self.slot_of:
                consts.append((self._assign(v), v.const))
            else:  # an initializer that is also a graph input: its value is the default feed
                consts.append((self.slot_of[id(v)], v.const))
        steps = [self._step(node) for node in g.nodes]
        outputs = [self.slot(v) for v in g.outputs]
        plan = Plan(self.n_slots, inputs, outputs, consts, steps, self.captures, self.capture_slots)
        _plan_frees(plan)
        return plan

    def _assign(self, v: Value) -> int:
        s = self._new_slot()
        self.slot_of[id(v)] = s
        return s

    def _step(self, node: Node) -> Step:
        args = tuple(self.slot(v) if v is not None else -1 for v in node.inputs)
        outs = tuple(self._assign(v) if v.name or v.uses else -1 for v in node.outputs)
        opset = node.opset
        kernel = lookup(node.op_type, node.domain, opset)
        label = node.label
        if kernel is None:
            fn = self._function_call(node.op_type, node.domain, opset, node, label)
            return Step(fn, args, outs, {}, label, node.op_type)
        attrs = dict(node.attrs)
        ctx = None
        captures: tuple[int, ...] = ()
        subgraphs = list(node.subgraphs())
        if kernel.wants_ctx or subgraphs:
            extra: dict[str, Any] = {}
            if subgraphs:
                plans, index, capture_slots = {}, {}, []
                for sub in subgraphs:
                    sub_plan = Planner(sub, self.functions).build()
                    plans[id(sub)] = sub_plan
                    idx = []
                    for v in sub_plan.captures:
                        capture_slots.append(self.slot(v))
                        idx.append(len(capture_slots) - 1)
                    index[id(sub)] = idx
                extra = {"plans": plans, "capture_index": index}
                captures = tuple(capture_slots)
            ctx = KernelContext(node.op_type, opset, node.name, len(node.outputs), None, extra)
            if not kernel.wants_ctx:
                raise UnsupportedOpError(f"{label}: kernel {kernel.name} takes subgraphs but no context")
        return Step(kernel.fn, args, outs, attrs, label, node.op_type, ctx, captures)

    def _function_call(self, op_type: str, domain: str, opset: int, node: Node, label: str) -> Callable:
        local = self.functions.get((domain, op_type))
        if local is not None:
            return FunctionCall(local, node.attrs, self.functions, label, node.graph.root.opset_imports)
        schema = _schema(op_type, domain, opset)
        if schema is not None and (schema.has_function or schema.has_context_dependent_function):
            return FunctionCall(None, node.attrs, self.functions, label, node.graph.root.opset_imports,
                                schema=schema, opset=opset, node=node)
        get_kernel(op_type, domain, opset, node.name)  # raises the clear "unsupported op" error
        raise AssertionError("unreachable")


def _schema(op_type: str, domain: str, opset: int):
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


def _plan_frees(plan: Plan) -> None:
    """Release each slot right after its last reader (graph outputs and constants are kept)."""
    keep = set(plan.outputs) | {s for s, _ in plan.consts} | set(plan.inputs) | set(plan.capture_slots)
    last: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for s in (*step.args, *step.captures):
            if s >= 0:
                last[s] = i
        for s in step.outs:
            if s >= 0:
                last.setdefault(s, i)
    frees: dict[int, list[int]] = {}
    for s, i in last.items():
        if s not in keep:
            frees.setdefault(i, []).append(s)
    for i, step in enumerate(plan.steps):
        step.free = tuple(frees.get(i, ()))


# ------------------------------------------------------------------ function expansion
class FunctionCall:
    """Runs an op through its ONNX function body; one nested plan per input-type signature."""

    def __init__(self, proto: onnx.FunctionProto | None, attrs: dict[str, Any], functions, label: str,
                 opsets: dict[str, int], *, schema=None, opset: int = 0, node: Node | None = None):
        self.proto, self.attrs, self.functions, self.label = proto, attrs, functions, label
        self.opsets, self.schema, self.opset, self.node = opsets, schema, opset, node
        self.plans: dict[tuple, Plan] = {}
        self.lock = threading.Lock()

    def __call__(self, *inputs: Any) -> list[Any]:
        key = tuple(_type_key(x) for x in inputs)
        plan = self.plans.get(key)
        if plan is None:
            with self.lock:
                plan = self.plans.get(key) or self._build(inputs)
                self.plans[key] = plan
        return tuple(plan.run(inputs))

    def _function_proto(self, inputs: Sequence[Any]) -> onnx.FunctionProto:
        if self.proto is not None:
            return self.proto
        s = self.schema
        if s.has_function:
            versions = [v for v in s.function_opset_versions if v <= self.opset]
            if versions:
                return _as_function(s.get_function_with_opset_version(max(versions)))
        node_bytes = _node_proto_for(self.node).SerializeToString()
        types = [_type_proto_of(x).SerializeToString() for x in inputs]
        versions = [v for v in s.context_dependent_function_opset_versions if v <= self.opset] or [self.opset]
        return _as_function(s.get_context_dependent_function_with_opset_version(max(versions), node_bytes, types))

    def _build(self, inputs: Sequence[Any]) -> Plan:
        fp = self._function_proto(inputs)
        graph = function_to_graph(fp, self.attrs, self.opsets, self.schema, len(inputs), self.label)
        return Planner(graph, self.functions).build()


def _as_function(body: bytes | onnx.FunctionProto) -> onnx.FunctionProto:
    if isinstance(body, onnx.FunctionProto):
        return body
    fp = onnx.FunctionProto()
    fp.ParseFromString(body)
    return fp


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


def _node_proto_for(node: Node) -> onnx.NodeProto:
    from tuili.ir.serde import _node_proto

    return _node_proto(node)


def function_to_graph(fp: onnx.FunctionProto, attrs: dict[str, Any], opsets: dict[str, int], schema,
                      n_inputs: int, label: str) -> Graph:
    """Instantiate a function body as a standalone Graph, substituting attribute references."""
    defaults: dict[str, Any] = {}
    if schema is not None:
        for name, a in schema.attributes.items():
            if a.default_value is not None and a.default_value.type != 0:
                defaults[name] = decode_attribute(a.default_value)
    for a in fp.attribute_proto:
        defaults[a.name] = decode_attribute(a)
    values = {**defaults, **attrs}
    g = Graph(fp.name or label)
    g.opset_imports = {**opsets, **{("" if o.domain == "ai.onnx" else o.domain): o.version for o in fp.opset_import}}
    for name in fp.input[:n_inputs]:
        g.inputs.append(g.new_value(name))
    for n in fp.node:
        inputs = [(g.lookup(x) or _missing(x, label)) if x else None for x in n.input]
        outs = [g.new_value(o) if o else Value("", g) for o in n.output]
        node = Node(n.op_type, inputs, outs, domain=n.domain, name=n.name or f"{label}/{n.op_type}", graph=g)
        for a in n.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name in values:
                    node.attrs[a.name] = values[a.ref_attr_name]
            else:
                node.attrs[a.name] = decode_attribute(a, lambda sub, parent=g: _function_subgraph(sub, parent))
        g.nodes.append(node)
    g.outputs = [g.lookup(o) for o in fp.output]
    return g


def _function_subgraph(gp: onnx.GraphProto, parent: Graph) -> Graph:
    from tuili.ir.serde import _subgraph

    return _subgraph(gp, parent)


def _missing(name: str, label: str):
    raise UnsupportedOpError(f"{label}: function body reads undefined value {name!r}")
