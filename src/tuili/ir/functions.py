"""ONNX functions as graphs: the body that defines an op, instantiated for one node.

An op without a kernel may still be defined by an ONNX function: a model-local ``FunctionProto``
(``graph.functions``) or a function in the op's schema (fixed, or context-dependent: built for the
node's attributes and input types). ``op_function(node)`` finds it; ``instantiate`` turns it into a
standalone Graph with the node's attributes substituted for the body's attribute references::

    fn = op_function(node)                        # None: the op has no function body
    body = fn.instantiate([type_proto, ...])      # one TypeProto per node input
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import onnx

from tuili.errors import InvalidGraphError
from tuili.ir.attributes import decode_attribute
from tuili.ir.core import Graph, Node, Value
from tuili.ir.serde import node_to_proto, subgraph_from_proto


class _SchemaFunctions(Protocol):
    """The function members of ``onnx.defs.OpSchema``: present at run time, missing from onnx's type stubs."""

    has_function: bool
    has_context_dependent_function: bool
    function_opset_versions: list[int]
    context_dependent_function_opset_versions: list[int]

    def get_function_with_opset_version(self, version: int) -> bytes: ...

    def get_context_dependent_function_with_opset_version(self, version: int, node: bytes,
                                                          input_types: list[bytes]) -> bytes: ...


def _functions(schema: onnx.defs.OpSchema) -> _SchemaFunctions:
    return cast(_SchemaFunctions, schema)


@dataclass(frozen=True)
class OpFunction:
    """The function defining ``node``'s op: a model-local ``proto``, or the op's ``schema``."""

    node: Node
    proto: onnx.FunctionProto | None = None
    schema: onnx.defs.OpSchema | None = None

    @property
    def context_dependent(self) -> bool:
        """Whether the body depends on the input types (``instantiate`` needs them)."""
        return self.proto is None and self._fixed_version() is None

    def body(self, input_types: Sequence[onnx.TypeProto] = ()) -> onnx.FunctionProto:
        """The FunctionProto for this node (``input_types``: one per node input, for context-dependent
        schema functions)."""
        if self.proto is not None:
            return self.proto
        if self.schema is None:
            raise InvalidGraphError(f"{self.node.label}: an OpFunction needs a FunctionProto or an op schema")
        s, opset = _functions(self.schema), self.node.opset
        version = self._fixed_version()
        if version is not None:
            return _as_function(s.get_function_with_opset_version(version))
        versions = [v for v in s.context_dependent_function_opset_versions if v <= opset] or [opset]
        node_bytes = node_to_proto(self.node).SerializeToString()
        types = [t.SerializeToString() for t in input_types]
        return _as_function(s.get_context_dependent_function_with_opset_version(max(versions), node_bytes, types))

    def instantiate(self, input_types: Sequence[onnx.TypeProto] = ()) -> Graph:
        """The body as a standalone Graph reading the node's inputs, attribute references substituted.

        The graph carries the model's opsets (the body's own imports win) and local functions, so
        the ops of the body resolve the way the node's would."""
        node = self.node
        fp = self.body(input_types)
        values = {**self._attribute_defaults(fp), **node.attrs}
        root = node.graph.root
        g = Graph(fp.name or node.label)
        g.opset_imports = {**root.opset_imports,
                           **{("" if o.domain == "ai.onnx" else o.domain): o.version for o in fp.opset_import}}
        g.functions = list(root.functions)
        for name in fp.input[:len(node.inputs)]:
            g.inputs.append(g.new_value(name))
        for n in fp.node:
            inputs = [(g.lookup(x) or _undefined(x, node.label)) if x else None for x in n.input]
            outs = [g.new_value(o) if o else Value("", g) for o in n.output]
            body_node = Node(n.op_type, inputs, outs, domain=n.domain, name=n.name or f"{node.label}/{n.op_type}",
                             graph=g)
            for a in n.attribute:
                if not a.ref_attr_name:
                    body_node.attrs[a.name] = decode_attribute(a, lambda sub: subgraph_from_proto(sub, g))
                elif a.ref_attr_name in values:  # a reference to an attribute the node does not set: absent
                    body_node.attrs[a.name] = values[a.ref_attr_name]
            g.nodes.append(body_node)
        g.outputs = [g.lookup(o) or _undefined(o, node.label) for o in fp.output]
        return g

    def _fixed_version(self) -> int | None:
        if self.schema is None:
            return None
        s = _functions(self.schema)
        if not s.has_function:
            return None
        versions = [v for v in s.function_opset_versions if v <= self.node.opset]
        return max(versions) if versions else None

    def _attribute_defaults(self, fp: onnx.FunctionProto) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        if self.schema is not None:
            for name, a in self.schema.attributes.items():
                if a.default_value is not None and a.default_value.type != 0:
                    defaults[name] = decode_attribute(a.default_value)
        for a in fp.attribute_proto:
            defaults[a.name] = decode_attribute(a)
        return defaults


def op_function(node: Node) -> OpFunction | None:
    """The function defining ``node``'s op (a local function of the model first, then the op schema's
    function for the node's opset), or None when there is none."""
    root = node.graph.root
    for f in root.functions:
        if (f.domain, f.name) == (node.domain, node.op_type):
            return OpFunction(node, proto=f)
    try:
        schema = onnx.defs.get_schema(node.op_type, node.opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    functions = _functions(schema)
    if functions.has_function or functions.has_context_dependent_function:
        return OpFunction(node, schema=schema)
    return None


def _as_function(body: bytes | onnx.FunctionProto) -> onnx.FunctionProto:
    if isinstance(body, onnx.FunctionProto):
        return body
    fp = onnx.FunctionProto()
    fp.ParseFromString(body)
    return fp


def _undefined(name: str, label: str):
    raise InvalidGraphError(f"{label}: its function body reads {name!r}, which the body does not define")
