"""Graph, Node, Value, Tensor: tuili's in-memory model.

A Node registers itself as a user of its input Values when built; a Value knows
its producer and its uses, so passes rewire through ``replace_all_uses_with``
instead of patching name tables. Serialization lives in ``serde``.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tuili.errors import InvalidGraphError

Dim = int | str | None
Shape = tuple[Dim, ...]


class Tensor:
    """Constant data: an ndarray, or a TensorProto decoded on first use (kept verbatim for saving)."""

    __slots__ = ("name", "_array", "proto", "external")

    def __init__(self, name: str, array: np.ndarray | None = None, proto: onnx.TensorProto | None = None,
                 external: dict[str, str] | None = None):
        self.name = name
        self._array = array
        self.proto = proto  # the original TensorProto, written back unchanged when the array is untouched
        self.external = external  # original external-data entries (location, offset, ...) or None

    def numpy(self) -> np.ndarray:
        if self._array is None:
            if self.proto is None:
                raise InvalidGraphError(f"tensor {self.name!r} has neither an array nor a TensorProto")
            self._array = numpy_helper.to_array(self.proto)
        return self._array

    @property
    def dtype(self) -> int:
        return self.proto.data_type if self.proto is not None else onnx.helper.np_dtype_to_tensor_dtype(self.numpy().dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.proto.dims) if self.proto is not None else tuple(self.numpy().shape)


class Value:
    """A named edge: produced by one node (or a graph input/initializer), used by many."""

    __slots__ = ("name", "dtype", "shape", "type_proto", "producer", "index", "uses", "tensor", "graph",
                 "doc_string", "_declared")

    def __init__(self, name: str, graph: Graph, dtype: int | None = None, shape: Shape | None = None,
                 type_proto: onnx.TypeProto | None = None):
        self.name = name
        self.graph = graph
        self.dtype = dtype
        self.shape = shape
        self.type_proto = type_proto  # kept for non-tensor types and for loss-free saving
        self.producer: Node | None = None
        self.index = 0
        self.uses: list[tuple[Node, int]] = []
        self.tensor: Tensor | None = None
        self.doc_string = ""
        self._declared: tuple | None = None  # (dtype, shape) as read, to detect changes on save

    def __repr__(self) -> str:
        return f"Value({self.name!r}, dtype={self.dtype}, shape={self.shape})"

    @property
    def const(self) -> np.ndarray | None:
        return self.tensor.numpy() if self.tensor is not None else None

    @const.setter
    def const(self, array: np.ndarray | None) -> None:
        self.tensor = None if array is None else Tensor(self.name, np.asarray(array))
        if array is not None:
            self.dtype = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)
            self.shape = tuple(np.shape(array))

    @property
    def is_initializer(self) -> bool:
        return self.graph.initializers.get(self.name) is self

    @property
    def is_graph_input(self) -> bool:
        return any(v is self for v in self.graph.inputs)

    @property
    def is_graph_output(self) -> bool:
        return any(v is self for v in self.graph.outputs)

    @property
    def is_tensor(self) -> bool:
        return self.type_proto is None or self.type_proto.HasField("tensor_type") or not self.type_proto.ListFields()

    def replace_all_uses_with(self, other: Value) -> None:
        """Make every consumer (and graph output slot) read ``other`` instead of this value."""
        for node, i in list(self.uses):
            node.set_input(i, other)
        g = self.graph
        g.outputs = [other if v is self else v for v in g.outputs]


class Node:
    """One operator application."""

    __slots__ = ("op_type", "domain", "name", "attrs", "inputs", "outputs", "graph", "doc_string",
                 "metadata_props", "overload", "_attr_protos")

    def __init__(self, op_type: str, inputs: list[Value | None], outputs: list[Value], *, domain: str = "",
                 name: str = "", attrs: dict[str, Any] | None = None, graph: Graph):
        self.op_type = op_type
        self.domain = "" if domain == "ai.onnx" else domain
        self.name = name
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.graph = graph
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.overload = ""
        self._attr_protos: dict[str, tuple[Any, onnx.AttributeProto]] = {}
        self.inputs: list[Value | None] = []
        for v in inputs:
            self._add_input(v)
        self.outputs = outputs
        for i, v in enumerate(outputs):
            v.producer, v.index = self, i

    def __repr__(self) -> str:
        return f"Node({self.op_type}, name={self.name!r})"

    def _add_input(self, v: Value | None) -> None:
        if v is not None:
            v.uses.append((self, len(self.inputs)))
        self.inputs.append(v)

    def set_input(self, i: int, v: Value | None) -> None:
        old = self.inputs[i]
        if old is not None:
            old.uses = [(n, j) for n, j in old.uses if not (n is self and j == i)]
        self.inputs[i] = v
        if v is not None:
            v.uses.append((self, i))

    def detach(self) -> None:
        """Drop this node's uses of its inputs (before removing it from its graph)."""
        for i in range(len(self.inputs)):
            self.set_input(i, None)

    @property
    def opset(self) -> int:
        return self.graph.opset(self.domain)

    @property
    def label(self) -> str:
        """How error messages name this node."""
        dom = f"{self.domain}::" if self.domain else ""
        return f"node {self.name!r} ({dom}{self.op_type})" if self.name else f"unnamed {dom}{self.op_type} node"

    def subgraphs(self) -> Iterator[Graph]:
        for v in self.attrs.values():
            if isinstance(v, Graph):
                yield v
            elif isinstance(v, list) and v and isinstance(v[0], Graph):
                yield from v


class Graph:
    """A computation graph. The root graph also carries the model-level fields."""

    def __init__(self, name: str = "main", parent: Graph | None = None):
        self.name = name
        self.parent = parent
        self.doc_string = ""
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.values: dict[str, Value] = {}
        self.extra_protos: dict[str, list] = {}  # sparse_initializer, quantization_annotation, metadata_props
        # model-level fields (root only)
        self.opset_imports: dict[str, int] = {"": 21}
        self.ir_version: int = onnx.IR_VERSION
        self.producer_name = ""
        self.producer_version = ""
        self.model_domain = ""
        self.model_version = 0
        self.model_doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.functions: list[onnx.FunctionProto] = []
        self.training_info: list = []
        self.source_dir: str | None = None  # where external data was read from
        self.external_locations: dict[str, str] = {}  # initializer -> external data file it came from
        self._counter = itertools.count()

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"

    # ----- scopes and opsets
    @property
    def root(self) -> Graph:
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def opset(self, domain: str = "") -> int:
        domain = "" if domain == "ai.onnx" else domain
        imports = self.root.opset_imports
        if domain in imports:
            return imports[domain]
        return imports.get("ai.onnx", 1) if domain == "" else 1

    def lookup(self, name: str) -> Value | None:
        """Find a value by name here or in an enclosing scope."""
        g: Graph | None = self
        while g is not None:
            v = g.values.get(name)
            if v is not None:
                return v
            g = g.parent
        return None

    # ----- construction
    def new_value(self, name: str = "", dtype: int | None = None, shape: Shape | None = None) -> Value:
        if name and name in self.values:
            raise InvalidGraphError(f"graph {self.name!r}: value name {name!r} is defined twice")
        v = Value(name, self, dtype, shape)
        if name:
            self.values[name] = v
        return v

    def unique_name(self, hint: str) -> str:
        while True:
            name = f"{hint}__{next(self._counter)}"
            if self.lookup(name) is None:
                return name

    def add_input(self, name: str, dtype: int | None, shape: Shape | None) -> Value:
        v = self.new_value(name, dtype, shape)
        self.inputs.append(v)
        return v

    def add_initializer(self, name: str, array: np.ndarray) -> Value:
        v = self.values.get(name) or self.new_value(name)
        v.const = array
        self.initializers[name] = v
        return v

    def add_node(self, op_type: str, inputs: list[Value | None], num_outputs: int = 1, *, domain: str = "",
                 name: str = "", attrs: dict[str, Any] | None = None, output_names: list[str] | None = None,
                 index: int | None = None) -> Node:
        """Create a node with fresh output values and insert it (at the end, or before ``index``)."""
        names = output_names or [self.unique_name(name or op_type.lower()) for _ in range(num_outputs)]
        outputs = [self.new_value(n) for n in names]
        node = Node(op_type, inputs, outputs, domain=domain, name=name or self.unique_name(op_type), attrs=attrs,
                    graph=self)
        self.nodes.insert(len(self.nodes) if index is None else index, node)
        return node

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are no longer read."""
        self.replace_nodes([node], [])

    def replace_nodes(self, old: Sequence[Node], new: Sequence[Node], values: Mapping[Value, Value] | None = None) -> None:
        """Splice ``new`` in for ``old`` in one step.

        ``new`` nodes (built with ``graph=self``, not yet in ``nodes``) take the place of the last of
        ``old`` in graph order, in the order given: they may read whatever the old nodes read. An old
        output taken over by a new node (the same Value as its output) or made a constant (its
        producer set to None) keeps its readers and its name; ``values``
        maps other old outputs to replacements, which their readers and graph-output slots move to;
        every other old output must be unread outside ``old``. The old nodes' reads, their bodies'
        included, are dropped. Raises InvalidGraphError, before the node list changes, when that
        cannot hold. (A value a subgraph returns directly from this scope is not a read: callers
        keep such values, as the passes do with ``pinned_values``.)"""
        values = dict(values or {})
        old = list({id(n): n for n in old}.values())
        old_ids = {id(n) for n in old}
        try:
            positions = sorted(self.nodes.index(n) for n in old)  # nodes compare by identity
        except ValueError:
            positions = []
        if not positions:
            missing = [n.label for n in old if not any(m is n for m in self.nodes)]
            raise InvalidGraphError(f"graph {self.name!r}: cannot replace {', '.join(missing) or 'no nodes'}: "
                                    "only nodes of this graph can be replaced")
        if any(n.graph is not self for n in new):
            raise InvalidGraphError(f"graph {self.name!r}: replacement nodes must be built with graph=<this graph>")
        inside = set(old_ids)  # readers that go away with the old nodes, their bodies included
        for n in old:
            for sub in n.subgraphs():
                inside.update(id(m) for m in sub.all_nodes())
        kept = {id(v) for n in old for v in n.outputs if v.producer is not n}
        for n in new:
            for v in n.inputs:
                if v is not None and v not in values and v.producer is not None and id(v.producer) in old_ids:
                    raise InvalidGraphError(f"graph {self.name!r}: replacement {n.label} reads {v.name!r}, an output "
                                            f"of {v.producer.label}, which is being removed")
        for n in old:
            for out in n.outputs:
                if id(out) in kept or out in values:
                    continue
                readers = [m.label for m, _ in out.uses if id(m) not in inside]
                if readers or out.is_graph_output:
                    why = f"read by {readers[0]}" if readers else "a graph output"
                    raise InvalidGraphError(f"graph {self.name!r}: cannot remove {n.label}: its output {out.name!r} "
                                            f"is {why}; map it to a replacement value")
        for before, after in values.items():
            before.replace_all_uses_with(after)
        for n in old:
            n.detach()
            for sub in n.subgraphs():  # a body's reads of outer values go away with it
                for inner in sub.all_nodes():
                    inner.detach()
            for out in n.outputs:
                if id(out) not in kept and out.name and self.values.get(out.name) is out:
                    del self.values[out.name]
        for i in reversed(positions):
            del self.nodes[i]
        at = positions[-1] - len(positions) + 1
        self.nodes[at:at] = list(new)

    def decode_constants(self) -> None:
        """Decode every initializer (nested graphs' too) to its array and drop the TensorProto it was
        read from: once all are dropped the loaded model's bytes are freed, so the weights are held
        once, not twice. Saving then encodes the arrays again (values unchanged)."""
        for g in (self, *self.subgraphs()):
            for v in g.initializers.values():
                if v.tensor is not None and v.tensor.proto is not None:
                    v.tensor.numpy()
                    v.tensor.proto = v.tensor.external = None

    # ----- traversal
    def subgraphs(self) -> Iterator[Graph]:
        """Every nested graph, depth first."""
        for node in self.nodes:
            for sub in node.subgraphs():
                yield sub
                yield from sub.subgraphs()

    def all_nodes(self) -> Iterator[Node]:
        """Nodes of this graph and of every nested subgraph."""
        for node in self.nodes:
            yield node
            for sub in node.subgraphs():
                yield from sub.all_nodes()

    def topological_sort(self) -> None:
        """Order nodes so each comes after its producers (stable); raise on a cycle, naming its nodes."""
        index = {id(n): i for i, n in enumerate(self.nodes)}
        pending = [0] * len(self.nodes)
        users: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            deps = {index[id(p)] for p in _producers_in(node, self) if id(p) in index}
            pending[i] = len(deps)
            for d in deps:
                users[d].append(i)
        # Kahn's algorithm, always taking the earliest ready node: a sorted graph keeps its order.
        ready = [i for i, c in enumerate(pending) if c == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users[i]:
                pending[u] -= 1
                if pending[u] == 0:
                    heapq.heappush(ready, u)
        if len(order) != len(self.nodes):
            stuck = [self.nodes[i].label for i, c in enumerate(pending) if c > 0]
            raise InvalidGraphError(
                f"graph {self.name!r} has a cycle through {', '.join(stuck[:5])}"
                f"{' ...' if len(stuck) > 5 else ''}: an ONNX graph must be acyclic; fix the exporter or the edit that made it")
        self.nodes = [self.nodes[i] for i in order]

    def validate(self) -> None:
        """Check structure: every input defined, single producer per name, acyclic, outputs defined."""
        from tuili.ir.validate import validate_graph

        validate_graph(self)

    # ----- serialization shortcuts
    def to_proto(self) -> onnx.ModelProto:
        from tuili.ir.serde import to_model_proto

        return to_model_proto(self)

    def save(self, path: str, **kw: Any) -> None:
        from tuili.ir.serde import save

        save(self, path, **kw)


def _producers_in(node: Node, graph: Graph) -> Iterator[Node]:
    """Producers (in ``graph``) this node depends on, including through its subgraphs' outer references."""
    for v in node.inputs:
        if v is not None and v.producer is not None and v.producer.graph is graph:
            yield v.producer
    for sub in node.subgraphs():
        for inner in sub.all_nodes():
            for v in inner.inputs:
                if v is not None and v.producer is not None and v.producer.graph is graph:
                    yield v.producer
