"""What every pass shares: the Pass interface and its metadata, graph copying, small helpers.

A pass is an object with a ``name`` and ``run(graph) -> bool`` (True when it changed the graph);
its class declares what the manager needs to build pipelines (see :class:`Pass`). A pass rewrites
one graph (the manager runs it on the root, then on every subgraph). Values that subgraphs
(If/Loop/Scan bodies) read from an enclosing scope are registered as uses there and so are never
removed, and values a subgraph returns directly from an enclosing scope are pinned.
"""
from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import numpy as np

from tuili.ir import Graph, from_model_proto
from tuili.ir.core import Node, Value

log = logging.getLogger(__name__)

TUILI_DOMAIN = "tuili"


class Pass:
    """Base of tuili's passes. Metadata (class attributes):

    ``level``: the lowest optimization level (1..3) whose pipeline runs the pass.
    ``emits_custom_ops``: it may create tuili-domain nodes, so it is left out when the result must
    run on any ONNX engine (``--target onnx``).
    ``needs_shapes``: it reads inferred shapes or dtypes, so the manager infers them first.

    Any object with ``name`` and ``run`` is a pass too; missing metadata reads as these defaults.
    """

    name: str = ""
    level: int = 1
    emits_custom_ops: bool = False
    needs_shapes: bool = False

    def run(self, graph: Graph) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


def copy_graph(graph: Graph) -> Graph:
    """A deep copy of a root graph (through its ONNX form: loss-free, shares nothing with ``graph``)."""
    g = from_model_proto(graph.to_proto())
    g.source_dir = graph.source_dir
    g.external_locations = dict(graph.external_locations)
    return g


# ----------------------------------------------------------------------------- constants
def const_of(v: Value | None) -> np.ndarray | None:
    """The constant array behind ``v``, or None when ``v`` can change at run time.

    An initializer that is also a graph input is only a default: a feed may replace it."""
    if v is None or v.tensor is None:
        return None
    g = v.graph
    if any(x is v for x in g.inputs):
        return None
    arr = v.const
    return arr if isinstance(arr, np.ndarray) else None

def is_const(v: Value | None) -> bool:
    return const_of(v) is not None


def add_const(graph: Graph, hint: str, array: np.ndarray) -> Value:
    """A fresh initializer holding ``array``."""
    return graph.add_initializer(graph.unique_name(hint), np.asarray(array))


# ----------------------------------------------------------------------------- uses and outputs
def pinned_values(graph: Graph) -> set[int]:
    """ids of root values a subgraph returns directly (not registered as uses): never rewire them."""
    out: set[int] = set()
    for sub in graph.subgraphs():
        for v in sub.outputs:
            if v.graph is not sub:
                out.add(id(v))
    return out


def forward(old: Value, new: Value, pinned: Collection[int] = frozenset()) -> bool:
    """Make everything read ``new`` instead of ``old`` (``old`` is about to die).

    Graph outputs keep their names: when ``old`` is a graph output, ``new`` takes its name if
    ``new`` is an ordinary intermediate of the same graph; otherwise nothing changes and False is
    returned."""
    if id(old) in pinned:
        return False
    g = old.graph
    if old.is_graph_output:
        if (new.graph is not g or new.producer is None or new.is_graph_output or id(new) in pinned
                or not old.name):
            return False
        old_name = old.name
        old.replace_all_uses_with(new)
        if g.values.get(old_name) is old:
            del g.values[old_name]
        old.name = g.unique_name(old_name + "__dead")
        g.values[old.name] = old
        rename(new, old_name)
        new.dtype = new.dtype or old.dtype
        new.shape = new.shape if new.shape is not None else old.shape
        return True
    old.replace_all_uses_with(new)
    return True


def rename(v: Value, name: str) -> None:
    g = v.graph
    if g.values.get(v.name) is v:
        del g.values[v.name]
    if v.name in g.initializers and g.initializers[v.name] is v:
        del g.initializers[v.name]
        g.initializers[name] = v
    v.name = name
    if v.tensor is not None:
        v.tensor.name = name
    g.values[name] = v


def attr(node: Node, name: str, default: Any = None) -> Any:
    return node.attrs.get(name, default)


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.shape is None:
        return None
    dims = tuple(d for d in v.shape if isinstance(d, int) and d >= 0)
    return dims if len(dims) == len(v.shape) else None
