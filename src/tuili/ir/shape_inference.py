"""Shape and dtype inference over a tuili graph (and, through an adapter, an ONNX ModelProto).

    from tuili.ir.shape_inference import infer_shapes
    infer_shapes(graph)               # fills Value.dtype / Value.shape in place, returns graph
    infer_shapes(graph, strict=True)  # raises ShapeInferenceError on inconsistent inputs

The driver walks nodes in order, builds an :class:`InferContext` per node (input types,
decoded attributes, known input values), calls the op's rule from ``tuili.ir.shape_rules`` and
stores the results. Known values (initializers, Constant outputs, and small int64 shape tensors
computed along Shape -> Gather -> Concat chains) are propagated so that Reshape/Expand/Tile/
ConstantOfShape/Slice downstream get concrete or symbolic shapes. Subgraphs (If/Loop/Scan/
SequenceMap bodies) are inferred recursively with their formal inputs typed from the node.

The graph is duck-typed on the ``tuili.ir`` API (Graph.nodes/inputs/outputs/initializers,
Node.op_type/domain/name/attrs/inputs/outputs/opset, Value.dtype/shape/type_proto/const), so the
same driver also runs over :class:`ProtoGraph`, a light read-only view of an ``onnx.ModelProto``
used by :func:`infer_model_types`.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from tuili.errors import ShapeInferenceError

from .attributes import decode_attribute
from .shape_rules import InferContext, OptionalType, SequenceType, TensorType, get_rule
from .shape_rules.misc import _type_from_proto
from .shape_rules.registry import merge_shape

log = logging.getLogger(__name__)

__all__ = ["infer_shapes", "infer_model_types", "ProtoGraph", "type_to_proto"]

MAX_CONST_FOR_RULES = 1 << 16  # initializers larger than this are not handed to rules as values


# --------------------------------------------------------------------------- type helpers
def _np_to_onnx_dtype(arr: np.ndarray) -> int | None:
    if arr.dtype == object:
        return TensorProto.STRING
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
    except Exception:  # noqa: BLE001
        return None


def type_to_proto(t) -> onnx.TypeProto | None:
    """A tuili type (TensorType/SequenceType/OptionalType) as an onnx.TypeProto."""
    tp = onnx.TypeProto()
    if isinstance(t, TensorType):
        tt = tp.tensor_type
        if t.dtype:
            tt.elem_type = t.dtype
        if t.shape is not None:
            tt.shape.SetInParent()
            for d in t.shape:
                dim = tt.shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
        return tp
    if isinstance(t, SequenceType):
        tp.sequence_type.SetInParent()
        if t.elem is not None:
            tp.sequence_type.elem_type.CopyFrom(type_to_proto(t.elem))
        return tp
    if isinstance(t, OptionalType):
        tp.optional_type.SetInParent()
        if t.elem is not None:
            tp.optional_type.elem_type.CopyFrom(type_to_proto(t.elem))
        return tp
    return None


def _declared_type(v):
    """What a Value already says about itself (declared inputs, value_info, initializers)."""
    if v is None:
        return None
    tensor = getattr(v, "tensor", None)  # tuili.ir.Value: dtype/shape without decoding the data
    if tensor is not None:
        return TensorType(tensor.dtype, tuple(int(d) for d in tensor.shape))
    const = getattr(v, "const", None)
    if const is not None:
        arr = np.asarray(const)
        return TensorType(_np_to_onnx_dtype(arr), tuple(int(d) for d in arr.shape))
    tp = getattr(v, "type_proto", None)
    if tp is not None and tp.WhichOneof("value") not in (None, "tensor_type"):
        return _type_from_proto(tp)
    dtype, shape = getattr(v, "dtype", None), getattr(v, "shape", None)
    if dtype is None and shape is None:
        return None
    return TensorType(dtype, None if shape is None else tuple(shape))


def _const_of(v) -> np.ndarray | None:
    """The value of an initializer if it is small enough to hand to rules."""
    tensor = getattr(v, "tensor", None)
    if tensor is not None:
        if int(np.prod(tensor.shape, dtype=np.int64)) > MAX_CONST_FOR_RULES:
            return None
        return np.asarray(tensor.numpy())
    const = getattr(v, "const", None)
    if const is not None and np.size(const) <= MAX_CONST_FOR_RULES:
        return np.asarray(const)
    return None


def _merge_types(declared, inferred, where: str, strict: bool):
    if declared is None:
        return inferred
    if inferred is None:
        return declared
    if isinstance(declared, TensorType) and isinstance(inferred, TensorType):
        if declared.dtype and inferred.dtype and declared.dtype != inferred.dtype:
            msg = (f"{where}: inferred element type {TensorProto.DataType.Name(inferred.dtype)} but the model "
                   f"declares {TensorProto.DataType.Name(declared.dtype)}")
            if strict:
                raise ShapeInferenceError(msg + "; fix the declared type or the producer")
            log.warning(msg)
        try:
            shape = merge_shape(inferred.shape, declared.shape)
        except ShapeInferenceError as e:
            msg = f"{where}: inferred shape {inferred} conflicts with declared {declared} ({e})"
            if strict:
                raise ShapeInferenceError(msg + "; fix the declared shape or the producer") from None
            log.warning(msg)
            shape = inferred.shape
        return TensorType(inferred.dtype or declared.dtype, shape)
    return inferred


# --------------------------------------------------------------------------- driver
class _State:
    def __init__(self, strict: bool):
        self.strict = strict
        self.types: dict[int, Any] = {}
        self.values: dict[int, np.ndarray] = {}
        self.counter = itertools.count()
        self.used_syms: set[str] = set()

    def fresh(self) -> str:
        while True:
            name = f"unk__{next(self.counter)}"
            if name not in self.used_syms:
                self.used_syms.add(name)
                return name

    def type_of(self, v):
        if v is None:
            return None
        t = self.types.get(id(v))
        if t is None:
            t = _declared_type(v)
            if t is not None:
                self.types[id(v)] = t
        return t

    def value_of(self, v):
        if v is None:
            return None
        if id(v) in self.values:
            return self.values[id(v)]
        return _const_of(v)

    def set(self, v, t) -> None:
        self.types[id(v)] = t
        if isinstance(t, TensorType):
            v.dtype = t.dtype
            v.shape = None if t.shape is None else tuple(t.shape)
            if hasattr(v, "type_proto") and v.type_proto is not None and \
                    v.type_proto.WhichOneof("value") not in (None, "tensor_type"):
                v.type_proto = None
        elif t is not None and hasattr(v, "type_proto"):
            v.type_proto = type_to_proto(t)
            v.dtype = v.shape = None


def infer_shapes(graph, *, strict: bool = False):
    """Fill ``dtype``/``shape`` of every value of ``graph`` (and its subgraphs) in place."""
    state = _State(strict)
    _collect_symbols(graph, state)
    _infer_graph(graph, state, input_types=None)
    return graph


def _collect_symbols(graph, state: _State) -> None:
    for v in list(graph.inputs) + list(getattr(graph, "outputs", [])):
        for d in getattr(v, "shape", None) or ():
            if isinstance(d, str):
                state.used_syms.add(d)


def _node_opset(node, graph) -> int:
    op = getattr(node, "opset", None)
    if isinstance(op, int):
        return op
    try:
        return graph.opset(node.domain)
    except Exception:  # noqa: BLE001
        return 1


def _infer_graph(graph, state: _State, input_types) -> list:
    if input_types is not None:
        for v, t in zip(graph.inputs, input_types):
            declared = _declared_type(v)
            merged = _merge_types(declared, t, f"subgraph {graph.name!r} input {v.name!r}", False)
            if merged is not None:
                state.set(v, merged)
    for v in graph.inputs:
        state.type_of(v)
    for v in getattr(graph, "initializers", {}).values():
        state.type_of(v)
    for node in graph.nodes:
        _infer_node(node, graph, state)
    return [state.type_of(v) for v in graph.outputs]


def _describe_inputs(node, types) -> str:
    parts = []
    for v, t in zip(node.inputs, types):
        if v is None:
            continue
        parts.append(f"{v.name}: {t if t is not None else '?'}")
    return ", ".join(parts)


def _infer_node(node, graph, state: _State) -> None:
    domain = node.domain or ""
    in_types = [state.type_of(v) for v in node.inputs]
    rule = get_rule(node.op_type, domain)
    where = f"node {node.name!r} ({node.op_type})"
    if rule is None:
        log.debug("no shape rule for %s%s; outputs left unknown", domain + "::" if domain else "", node.op_type)
        return
    ctx = InferContext(
        op_type=node.op_type,
        domain=domain,
        opset=_node_opset(node, graph),
        node_name=node.name,
        inputs=in_types,
        attrs=dict(node.attrs),
        values=[state.value_of(v) for v in node.inputs],
        num_outputs=len(node.outputs),
        _fresh=state.fresh,
    )

    def subgraph_infer(attr_name: str, types: list, lenient: bool = False) -> list:
        sub = node.attrs.get(attr_name)
        if sub is None or isinstance(sub, onnx.GraphProto):
            raise ShapeInferenceError(f"attribute {attr_name!r} is not a decoded subgraph")
        strict = state.strict
        if lenient:
            state.strict = False
        try:
            return _infer_graph(sub, state, types)
        finally:
            state.strict = strict

    ctx.subgraph_infer = subgraph_infer
    try:
        out_types = rule(ctx)
    except ShapeInferenceError as e:
        msg = f"{where}: {e}; inputs: {_describe_inputs(node, in_types)}"
        if state.strict:
            raise ShapeInferenceError(msg + ". Check the producer of these inputs or the model's declared shapes.") from None
        log.warning("shape inference: %s", msg)
        return
    except Exception as e:  # noqa: BLE001  a rule bug must not break loading a model
        msg = f"{where}: shape rule failed with {type(e).__name__}: {e}; inputs: {_describe_inputs(node, in_types)}"
        if state.strict:
            raise ShapeInferenceError(msg) from e
        log.warning("shape inference: %s", msg)
        return
    for i, v in enumerate(node.outputs):
        if v is None or not getattr(v, "name", ""):
            continue
        t = out_types[i] if i < len(out_types) else None
        declared = state.types.get(id(v)) or _declared_type(v)
        t = _merge_types(declared, t, f"{where} output {v.name!r}", state.strict)
        if t is not None:
            state.set(v, t)
        val = ctx.out_values[i] if i < len(ctx.out_values) else None
        if val is not None:
            state.values[id(v)] = val


# --------------------------------------------------------------------------- ModelProto adapter
class _PV:
    """Value in a ProtoGraph (same attribute names as tuili.ir.Value)."""

    __slots__ = ("name", "dtype", "shape", "type_proto", "const", "producer")

    def __init__(self, name: str, type_proto=None, const=None):
        self.name = name
        self.dtype = None
        self.shape = None
        self.type_proto = None
        self.const = const
        self.producer = None
        if type_proto is not None:
            kind = type_proto.WhichOneof("value")
            if kind == "tensor_type":
                t = _type_from_proto(type_proto)
                self.dtype, self.shape = t.dtype, t.shape
            elif kind is not None:
                self.type_proto = type_proto

    def tuili_type(self):
        return _declared_type(self)

    def __repr__(self) -> str:
        return f"_PV({self.name!r}, {self.tuili_type()})"


class _PN:
    __slots__ = ("op_type", "domain", "name", "attrs", "inputs", "outputs", "opset")

    def __init__(self, op_type, domain, name, attrs, inputs, outputs, opset):
        self.op_type, self.domain, self.name = op_type, domain, name
        self.attrs, self.inputs, self.outputs, self.opset = attrs, inputs, outputs, opset


class ProtoGraph:
    """A light view of an onnx GraphProto with the attribute names the driver uses."""

    def __init__(self, g: onnx.GraphProto, opsets: dict[str, int], parent: "ProtoGraph | None" = None,
                 keep_value_info: bool = True):
        self.name = g.name
        self.parent = parent
        self.opset_imports = opsets
        self.values: dict[str, _PV] = {}
        self.initializers: dict[str, _PV] = {}
        for init in g.initializer:
            v = _PV(init.name, const=numpy_helper.to_array(init))
            self.initializers[init.name] = self.values[init.name] = v
        for sp in g.sparse_initializer:
            from .attributes import sparse_to_dense

            v = _PV(sp.values.name, const=sparse_to_dense(sp))
            self.initializers[v.name] = self.values[v.name] = v
        self.inputs = []
        for vi in g.input:
            if vi.name in self.values:  # initializer also listed as input (old IR versions)
                self.inputs.append(self.values[vi.name])
                continue
            v = _PV(vi.name, vi.type if vi.HasField("type") else None)
            self.values[vi.name] = v
            self.inputs.append(v)
        declared = {vi.name: vi for vi in g.value_info} if keep_value_info else {}
        for vi in g.output:
            if vi.HasField("type"):
                declared.setdefault(vi.name, vi)
        self.nodes: list[_PN] = []
        for n in g.node:
            ins = [self.lookup(name) if name else None for name in n.input]
            attrs = {a.name: decode_attribute(a, lambda sub: ProtoGraph(sub, opsets, self, keep_value_info))
                     for a in n.attribute}
            outs = []
            for name in n.output:
                vi = declared.get(name)
                v = _PV(name, vi.type if vi is not None and vi.HasField("type") else None)
                if name:
                    self.values[name] = v
                outs.append(v)
            pn = _PN(n.op_type, n.domain, n.name, attrs, ins, outs, opsets.get(n.domain or "", 1))
            for v in outs:
                v.producer = pn
            self.nodes.append(pn)
        self.outputs = [self.lookup(vi.name) for vi in g.output]

    def lookup(self, name: str) -> _PV:
        g = self
        while g is not None:
            if name in g.values:
                return g.values[name]
            g = g.parent
        v = _PV(name)  # dangling reference: unknown type
        self.values[name] = v
        return v

    def opset(self, domain: str = "") -> int:
        return self.opset_imports.get(domain, 1)

    def subgraphs(self):
        for n in self.nodes:
            for a in n.attrs.values():
                subs = a if isinstance(a, list) else [a]
                for s in subs:
                    if isinstance(s, ProtoGraph):
                        yield s
                        yield from s.subgraphs()

    @classmethod
    def from_model(cls, model: onnx.ModelProto, keep_value_info: bool = True) -> "ProtoGraph":
        opsets = {o.domain if o.domain != "ai.onnx" else "": o.version for o in model.opset_import}
        return cls(model.graph, opsets, None, keep_value_info)


def infer_model_types(model: onnx.ModelProto, *, strict: bool = False, keep_value_info: bool = True):
    """Infer types over a ModelProto; returns (ProtoGraph, {value name: type}) for every graph."""
    pg = ProtoGraph.from_model(model, keep_value_info)
    infer_shapes(pg, strict=strict)
    types: dict[str, Any] = {}
    for g in [pg, *pg.subgraphs()]:
        for name, v in g.values.items():
            if name:
                types.setdefault(name, v.tuili_type())
    return pg, types
