"""Common-subexpression elimination: two nodes with the same op, attributes and input values compute
the same outputs, so the later one is dropped. Small constants with equal dtype, shape and bytes are
merged first, so nodes reading equal-but-distinct constants also match."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tuili.ir import Graph
from tuili.ir.core import Node

from .base import Pass, const_of, forward, pinned_values

log = logging.getLogger(__name__)

MAX_CONST_BYTES = 1 << 16  # constants compared byte for byte when merging
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


def _freeze(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ("nd", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(e) for e in x)
    if isinstance(x, float) and x != x:
        return ("nan",)
    return x


class CommonSubexpressionElimination(Pass):
    name = "cse"
    level = 1

    def run(self, graph: Graph) -> bool:
        pinned = pinned_values(graph)
        changed = self._merge_constants(graph, pinned)
        seen: dict[Any, Node] = {}
        for node in list(graph.nodes):
            if node.op_type in _NONDETERMINISTIC or any(True for _ in node.subgraphs()):
                continue
            try:
                key = (node.domain, node.op_type, node.overload, tuple(id(v) for v in node.inputs),
                       len(node.outputs), tuple(sorted((k, _freeze(v)) for k, v in node.attrs.items())))
                hash(key)
            except TypeError:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            pairs = list(zip(node.outputs, first.outputs))
            if any(id(dup) in pinned or (dup.is_graph_output and not (keep.name and not keep.is_graph_output))
                   for dup, keep in pairs if dup.uses or dup.is_graph_output):
                continue
            ok = True
            for dup, keep in pairs:
                if not (dup.uses or dup.is_graph_output):
                    continue
                if not keep.name:
                    ok = False
                    break
                if not forward(dup, keep, pinned):
                    ok = False
                    break
            if ok:
                graph.remove_node(node)
                changed = True
        return changed

    @staticmethod
    def _merge_constants(graph: Graph, pinned: set[int]) -> bool:
        changed = False
        seen: dict[Any, Any] = {}
        for v in list(graph.initializers.values()):
            arr = const_of(v)
            if arr is None or arr.nbytes > MAX_CONST_BYTES or arr.dtype == object or v.is_graph_output or id(v) in pinned:
                continue
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            keep = seen.setdefault(key, v)
            if keep is v or not v.uses:
                continue
            v.replace_all_uses_with(keep)
            changed = True
        return changed
