"""Structural checks of a Graph (run by the pass manager in debug mode and on load)."""
from __future__ import annotations

from tuili.errors import InvalidGraphError
from tuili.ir.core import Graph


def validate_graph(graph: Graph) -> None:
    """Raise InvalidGraphError naming the node at fault; recurse into subgraphs."""
    defined: set[int] = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    names: dict[str, str] = {}
    for node in graph.nodes:
        if node.domain not in graph.root.opset_imports and not (node.domain == "" and "ai.onnx" in graph.root.opset_imports):
            raise InvalidGraphError(f"{node.label} uses domain {node.domain or 'ai.onnx'!r}, which the model "
                                    f"does not import: add it to opset_import")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v.graph is graph and id(v) not in defined:
                why = "is produced later (graph not in topological order)" if v.producer is not None else \
                    "is defined nowhere (a dangling input)"
                raise InvalidGraphError(f"graph {graph.name!r}: {node.label} input {i} ({v.name!r}) {why}")
            if v.graph is not graph and graph.lookup(v.name) is not v:
                raise InvalidGraphError(f"graph {graph.name!r}: {node.label} reads {v.name!r} from a scope "
                                        f"that does not enclose it")
            if (node, i) not in [(n, j) for n, j in v.uses]:
                raise InvalidGraphError(f"{node.label}: input {v.name!r} does not list the node as a user")
        for v in node.outputs:
            if not v.name:
                continue
            if v.name in names:
                raise InvalidGraphError(f"graph {graph.name!r}: value {v.name!r} is produced by both "
                                        f"{names[v.name]} and {node.label}")
            names[v.name] = node.label
            if v.producer is not node:
                raise InvalidGraphError(f"{node.label}: output {v.name!r} names another producer")
            defined.add(id(v))
        for sub in node.subgraphs():
            validate_graph(sub)
    for v in graph.outputs:
        if v.graph is graph and id(v) not in defined:
            raise InvalidGraphError(f"graph {graph.name!r}: output {v.name!r} is not produced by any node")
