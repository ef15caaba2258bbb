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

The driver only uses the ``tuili.ir`` API (Graph.nodes/inputs/outputs/initializers, Node.op_type/
domain/name/attrs/inputs/outputs/opset, Value.dtype/shape/type_proto/tensor); non-tensor values
(sequences, optionals) get their type as ``Value.type_proto``. :func:`value_type` reads a Value's
type back as a TensorType/SequenceType/OptionalType.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from tuili.errors import ShapeInferenceError

from .shape_rules import InferContext, OptionalType, SequenceType, TensorType, get_rule
from .shape_rules.misc import _type_from_proto
from .shape_rules.registry import merge_shape

log = logging.getLogger(__name__)

__all__ = ["infer_shapes", "infer_model_types", "type_to_proto", "value_type"]

MAX_CONST_FOR_RULES = 4096  # larger initializers (weights) are not decoded for rules


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


def value_type(v):
    """A Value's type as TensorType / SequenceType / OptionalType, or None if unknown."""
    return _declared_type(v)


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
        self.dead_code = False  # inside an If branch that cannot run: problems are only debug-logged
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


def _normalized(t):
    """Plain Python ints in shapes; a negative size means the inputs cannot be consistent."""
    if isinstance(t, TensorType) and t.shape is not None:
        dims = tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in t.shape)
        if any(isinstance(d, int) and d < 0 for d in dims):
            raise ShapeInferenceError(f"the inputs give a negative output size {list(dims)}")
        return TensorType(t.dtype, dims)
    if isinstance(t, SequenceType):
        return SequenceType(_normalized(t.elem))
    if isinstance(t, OptionalType):
        return OptionalType(_normalized(t.elem))
    return t


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
        if not _infer_function_call(node, graph, state, in_types):
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
        strict, dead = state.strict, state.dead_code
        if lenient:
            state.strict, state.dead_code = False, True
        try:
            return _infer_graph(sub, state, types)
        finally:
            state.strict, state.dead_code = strict, dead

    ctx.subgraph_infer = subgraph_infer
    try:
        out_types = [_normalized(t) for t in rule(ctx)]
    except ShapeInferenceError as e:
        msg = f"{where}: {e}; inputs: {_describe_inputs(node, in_types)}"
        if state.strict:
            raise ShapeInferenceError(msg + ". Check the producer of these inputs or the model's declared shapes.") from None
        log.log(logging.DEBUG if state.dead_code else logging.WARNING, "shape inference: %s", msg)
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


def _infer_function_call(node, graph, state: _State, in_types) -> bool:
    """A call of a model-local function: inline it in a one-node model typed like the call site,
    and infer that. Returns False if the op is not a local function."""
    root = getattr(graph, "root", graph)
    fns = getattr(root, "functions", None) or []
    fn = next((f for f in fns if f.name == node.op_type and f.domain == node.domain
               and getattr(f, "overload", "") == getattr(node, "overload", "")), None)
    if fn is None:
        return False
    import onnx.inliner

    from .serde import from_model_proto

    ins, inits, names = [], [], []
    for i, (v, t) in enumerate(zip(node.inputs, in_types)):
        if v is None:
            names.append("")
            continue
        name = f"__in{i}"
        names.append(name)
        val = state.value_of(v)
        if val is not None and val.dtype != object:
            inits.append(numpy_helper.from_array(val, name))
        else:
            vi = onnx.ValueInfoProto(name=name)
            tp = type_to_proto(t)
            if tp is not None:
                vi.type.CopyFrom(tp)
            ins.append(vi)
    outs = [f"__out{i}" for i in range(len(node.outputs))]
    call = onnx.helper.make_node(node.op_type, names, outs, domain=node.domain)
    protos = getattr(node, "_attr_protos", {})
    for k, val in node.attrs.items():
        call.attribute.append(protos[k][1] if k in protos else onnx.helper.make_attribute(k, val))
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in root.opset_imports.items()]
    model = onnx.helper.make_model(
        onnx.helper.make_graph([call], "call", ins, [onnx.ValueInfoProto(name=o) for o in outs], inits),
        opset_imports=opsets, functions=fns)
    try:
        body = from_model_proto(onnx.inliner.inline_local_functions(model))
    except Exception as e:  # noqa: BLE001
        log.warning("shape inference: cannot inline local function %s::%s for node %r: %s",
                    node.domain, node.op_type, node.name, e)
        return True
    _infer_graph(body, state, None)
    for v, name in zip(node.outputs, outs):
        inner = body.values.get(name)
        if v is None or not getattr(v, "name", "") or inner is None:
            continue
        t = state.type_of(inner)
        if t is not None:
            state.set(v, _merge_types(state.types.get(id(v)) or _declared_type(v), t,
                                      f"node {node.name!r} ({node.op_type}) output {v.name!r}", state.strict))
        if id(inner) in state.values:
            state.values[id(v)] = state.values[id(inner)]
    return True


# --------------------------------------------------------------------------- ModelProto convenience
def infer_model_types(model: onnx.ModelProto, *, strict: bool = False) -> dict[str, Any]:
    """Load ``model`` into tuili's IR, infer, and return {value name: type} over all graphs.

    Types are TensorType / SequenceType / OptionalType (or None where unknown)."""
    from .serde import from_model_proto

    graph = infer_shapes(from_model_proto(model), strict=strict)
    types: dict[str, Any] = {}
    for g in [graph, *graph.subgraphs()]:
        for name, v in g.values.items():
            if name:
                types.setdefault(name, _declared_type(v))
    return types
