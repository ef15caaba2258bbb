"""ONNX <-> tuili IR. Loss-free for what tuili does not change: opsets, initializers (and their
external data files), metadata, doc strings, value_info and attributes are written back as read."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from tuili.errors import InvalidGraphError, ModelLoadError
from tuili.ir.attributes import decode_attribute, sparse_to_dense
from tuili.ir.core import Graph, Node, Tensor, Value

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


# ---------------------------------------------------------------- reading
def read_model_proto(src: ModelSource) -> tuple[onnx.ModelProto, str | None, dict[str, str]]:
    """Parse a model from a path, bytes or a ModelProto and load its external data.

    Returns (proto, base dir, {initializer name: external data file})."""
    if isinstance(src, onnx.ModelProto):
        for t in tensor_protos(src):
            if uses_external_data(t):
                raise ModelLoadError(
                    f"initializer {t.name!r} uses external data but the model was given as a ModelProto "
                    f"without a directory: load it from its path instead")
        return src, None, {}
    base_dir = None
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, where = bytes(src), "the given bytes"
    else:
        path = Path(src)
        where = str(path)
        if not path.is_file():
            raise ModelLoadError(f"model file {where} does not exist (or is not a file): check the path")
        data = path.read_bytes()
        base_dir = str(path.parent)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{where} is not a valid ONNX model: the protobuf could not be parsed ({e}); "
            f"the file is truncated or corrupt, or not an .onnx file: re-export or re-download it") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelLoadError(
            f"{where} is not a valid ONNX model: it has no graph or no ir_version ({len(data)} bytes read); "
            f"the file is empty, truncated or not an .onnx file")
    locations: dict[str, str] = {}
    if base_dir is not None:
        locations = _check_external_files(proto, base_dir, where)
        load_external_data_for_model(proto, base_dir)
    return proto, base_dir, locations


def tensor_protos(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto a model holds (the ones external data can back): initializers, sparse
    initializers' values and indices, and tensor attributes, in subgraphs and functions too."""
    yield from _graph_tensors(model.graph)
    for f in model.functions:
        yield from _node_tensors(f.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def _check_external_files(proto: onnx.ModelProto, base_dir: str, where: str) -> dict[str, str]:
    locations = {}
    for t in tensor_protos(proto):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            locations[t.name] = loc
            if not (Path(base_dir) / loc).is_file():
                raise ModelLoadError(
                    f"{where}: initializer {t.name!r} keeps its data in external file {loc!r}, "
                    f"which is missing from {base_dir}: copy the data file next to the model")
    return locations


def load(src: ModelSource) -> Graph:
    """Load an ONNX model (path, bytes or ModelProto) as a tuili Graph."""
    proto, base_dir, locations = read_model_proto(src)
    graph = from_model_proto(proto)
    graph.source_dir = base_dir
    graph.external_locations = locations
    return graph


def from_model_proto(mp: onnx.ModelProto) -> Graph:
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in mp.opset_import}
    g = Graph(mp.graph.name or "main")
    g.opset_imports = opsets
    g.ir_version = mp.ir_version
    g.producer_name, g.producer_version = mp.producer_name, mp.producer_version
    g.model_domain, g.model_version, g.model_doc_string = mp.domain, mp.model_version, mp.doc_string
    g.metadata_props = {p.key: p.value for p in mp.metadata_props}
    # copies, as for every message the graph keeps: a reference into the model would keep all of it
    # (weights included) alive however the graph changes (upb messages share their model's memory)
    g.functions = [_own(f) for f in mp.functions]
    g.training_info = [_own(t) for t in mp.training_info]
    _fill_graph(g, mp.graph)
    return g


def _own(message: Any) -> Any:
    """A copy of a protobuf message that shares no memory with the message it came from."""
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _set_type(v: Value, tp: onnx.TypeProto) -> None:
    v.type_proto = _own(tp)
    if tp.HasField("tensor_type"):
        tt = tp.tensor_type
        v.dtype = tt.elem_type or None
        v.shape = tuple(_dim(d) for d in tt.shape.dim) if tt.HasField("shape") else None
    v._declared = (v.dtype, v.shape)


def _dim(d: onnx.TensorShapeProto.Dimension):
    if d.HasField("dim_value"):
        # some exporters write a dynamic dim as -1: unknown, as onnxruntime reads it
        return d.dim_value if d.dim_value >= 0 else None
    if d.HasField("dim_param"):
        return d.dim_param
    return None


def _fill_graph(g: Graph, gp: onnx.GraphProto) -> None:
    g.name, g.doc_string = gp.name, gp.doc_string
    v: Value | None
    for vi in gp.input:
        v = g.new_value(vi.name)
        _set_type(v, vi.type)
        v.doc_string = vi.doc_string
        g.inputs.append(v)
    for t in gp.initializer:
        v = g.values.get(t.name) or g.new_value(t.name)
        v.tensor = Tensor(t.name, proto=t)
        if v.type_proto is None:
            v.dtype, v.shape = t.data_type, tuple(t.dims)
        g.initializers[t.name] = v
    if gp.sparse_initializer:
        g.extra_protos["sparse_initializer"] = list(gp.sparse_initializer)
        for sp in gp.sparse_initializer:
            name = sp.values.name
            v = g.values.get(name) or g.new_value(name)
            v.tensor = Tensor(name, array=sparse_to_dense(sp))
            v.dtype, v.shape = sp.values.data_type, tuple(sp.dims)
            g.initializers[name] = v
    if gp.quantization_annotation:
        g.extra_protos["quantization_annotation"] = list(gp.quantization_annotation)
    if gp.metadata_props:
        g.extra_protos["metadata_props"] = list(gp.metadata_props)

    # pass 1: every output name exists before any input is resolved (protos may be unsorted)
    outputs_of: list[list[Value]] = []
    for node in gp.node:
        outs = []
        for name in node.output:
            if name and (name in g.values):
                raise InvalidGraphError(
                    f"graph {g.name!r}: value {name!r} is produced twice (again by node {node.name!r}, "
                    f"{node.op_type}); ONNX requires each name to be assigned once")
            outs.append(g.new_value(name) if name else Value("", g))
        outputs_of.append(outs)
    # pass 2: nodes, inputs resolved through the scope chain, subgraphs built recursively
    for node, outs in zip(gp.node, outputs_of):
        inputs: list[Value | None] = []
        for name in node.input:
            if not name:
                inputs.append(None)
                continue
            v = g.lookup(name)
            if v is None:
                raise InvalidGraphError(
                    f"graph {g.name!r}: node {node.name!r} ({node.op_type}) reads {name!r}, which no node, "
                    f"graph input or initializer defines (a dangling input): fix the model's wiring")
            inputs.append(v)
        n = Node(node.op_type, inputs, outs, domain=node.domain, name=node.name, graph=g)
        n.doc_string = node.doc_string
        n.metadata_props = {p.key: p.value for p in node.metadata_props}
        n.overload = getattr(node, "overload", "")
        for a in node.attribute:
            val = decode_attribute(a, lambda sub: subgraph_from_proto(sub, g))
            n.attrs[a.name] = val
            n._attr_protos[a.name] = (val, _own(a))
        g.nodes.append(n)
    for vi in gp.value_info:
        v = g.values.get(vi.name)
        if v is not None:
            _set_type(v, vi.type)
            v.doc_string = vi.doc_string
    for vi in gp.output:
        v = g.lookup(vi.name)
        if v is None:
            raise InvalidGraphError(
                f"graph {g.name!r}: output {vi.name!r} is not produced by any node, input or initializer")
        if vi.type.ListFields() and (v.type_proto is None or v.producer is not None):
            _set_type(v, vi.type)
        g.outputs.append(v)
    g.topological_sort()


def subgraph_from_proto(gp: onnx.GraphProto, parent: Graph) -> Graph:
    """A GraphProto (a GRAPH attribute) as a Graph nested in ``parent``'s scope."""
    sub = Graph(gp.name, parent=parent)
    _fill_graph(sub, gp)
    return sub


# ---------------------------------------------------------------- writing
def _type_proto(v: Value) -> onnx.TypeProto | None:
    if v.type_proto is not None and (v.dtype, v.shape) == v._declared:
        return v.type_proto
    if v.dtype is None and v.shape is None:
        return v.type_proto
    shape = None if v.shape is None else [d if d is not None else "" for d in v.shape]
    tp = helper.make_tensor_type_proto(v.dtype or 0, shape)
    if v.shape is not None:  # an unknown dim is an empty Dimension, not dim_param ""
        for d, s in zip(tp.tensor_type.shape.dim, v.shape):
            if s is None:
                d.Clear()
    return tp


def _set(msg, **fields):
    """Set only non-empty fields: ONNX protos are proto2, where an explicit "" is serialized."""
    for k, val in fields.items():
        if val:
            setattr(msg, k, val)
    return msg


def _value_info(v: Value) -> onnx.ValueInfoProto:
    vi = _set(onnx.ValueInfoProto(), name=v.name, doc_string=v.doc_string)
    tp = _type_proto(v)
    if tp is not None and tp.ListFields():
        vi.type.CopyFrom(tp)
    return vi


def _attribute(name: str, val: Any, orig: tuple[Any, onnx.AttributeProto] | None) -> onnx.AttributeProto:
    if isinstance(val, Graph):
        a = onnx.AttributeProto(name=name, type=onnx.AttributeProto.GRAPH)
        a.g.CopyFrom(_graph_proto(val))
        return a
    if isinstance(val, list) and val and isinstance(val[0], Graph):
        a = onnx.AttributeProto(name=name, type=onnx.AttributeProto.GRAPHS)
        a.graphs.extend(_graph_proto(x) for x in val)
        return a
    if orig is not None and orig[0] is val:
        return orig[1]
    if isinstance(val, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(val))
    return helper.make_attribute(name, val)


def node_to_proto(n: Node) -> onnx.NodeProto:
    """The NodeProto of ``n`` (attributes as read where unchanged; subgraphs written out)."""
    p = _set(onnx.NodeProto(), op_type=n.op_type, domain=n.domain, name=n.name, doc_string=n.doc_string)
    p.input.extend(v.name if v is not None else "" for v in n.inputs)
    p.output.extend(v.name for v in n.outputs)
    if n.overload:
        p.overload = n.overload
    for name, val in n.attrs.items():
        p.attribute.append(_attribute(name, val, n._attr_protos.get(name)))
    for k, val in n.metadata_props.items():
        p.metadata_props.add(key=k, value=val)
    return p


def _tensor_proto(v: Value) -> onnx.TensorProto:
    t = v.tensor
    if t is None:
        raise InvalidGraphError(f"initializer {v.name!r} holds no data (its const was cleared): give it a value "
                                "or remove it from graph.initializers")
    if t.proto is not None:
        if t.proto.name == v.name:
            return t.proto
        p = onnx.TensorProto()
        p.CopyFrom(t.proto)
        p.name = v.name
        return p
    return numpy_helper.from_array(t.numpy(), v.name)


def _graph_proto(g: Graph) -> onnx.GraphProto:
    gp = _set(onnx.GraphProto(), name=g.name, doc_string=g.doc_string)
    gp.node.extend(node_to_proto(n) for n in g.nodes)
    gp.input.extend(_value_info(v) for v in g.inputs)
    gp.output.extend(_value_info(v) for v in g.outputs)
    sparse = {sp.values.name: sp for sp in g.extra_protos.get("sparse_initializer", [])}
    for name, v in g.initializers.items():
        if name in sparse and v.tensor is not None and v.tensor.proto is None:
            continue  # written back as the sparse tensor it came from
        gp.initializer.append(_tensor_proto(v))
    gp.sparse_initializer.extend(sp for name, sp in sparse.items() if name in g.initializers)
    gp.quantization_annotation.extend(g.extra_protos.get("quantization_annotation", []))
    gp.metadata_props.extend(g.extra_protos.get("metadata_props", []))
    boundary = {id(v) for v in g.inputs} | {id(v) for v in g.outputs} | {id(v) for v in g.initializers.values()}
    for v in g.values.values():
        if id(v) not in boundary and v.name and (v.type_proto is not None or v.dtype is not None):
            gp.value_info.append(_value_info(v))
    return gp


def to_model_proto(g: Graph) -> onnx.ModelProto:
    if g.parent is not None:
        raise InvalidGraphError(f"graph {g.name!r} is a subgraph: save its root model instead")
    mp = _set(onnx.ModelProto(), ir_version=g.ir_version, producer_name=g.producer_name,
              producer_version=g.producer_version, domain=g.model_domain,
              model_version=g.model_version, doc_string=g.model_doc_string)
    for domain, version in g.opset_imports.items():
        mp.opset_import.add(domain=domain, version=version)
    for k, val in g.metadata_props.items():
        mp.metadata_props.add(key=k, value=val)
    mp.functions.extend(g.functions)
    mp.training_info.extend(g.training_info)
    mp.graph.CopyFrom(_graph_proto(g))
    return mp


def save(g: Graph, path: str | os.PathLike, *, external_data: dict[str, str] | None = None) -> None:
    """Write ``g`` to ``path``. Initializers that came from external data files go back to files of
    the same names next to ``path``; ``external_data`` maps more initializer names to file names."""
    path = Path(path)
    mp = to_model_proto(g)
    moved = {**g.external_locations, **(external_data or {})}
    if moved:
        from onnx.external_data_helper import set_external_data, write_external_data_tensors

        path.parent.mkdir(parents=True, exist_ok=True)
        for loc in set(moved.values()):
            (path.parent / loc).write_bytes(b"")  # the data is in memory: rewrite rather than append
        for t in mp.graph.initializer:
            if t.name in moved and t.HasField("raw_data"):
                set_external_data(t, location=moved[t.name])
            elif t.name in moved:  # typed fields -> raw bytes, the form external data needs
                arr = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array(arr, t.name))
                set_external_data(t, location=moved[t.name])
        write_external_data_tensors(mp, str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mp.SerializeToString())

