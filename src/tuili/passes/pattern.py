"""Rewrite rules as data, applied by one driver (after tinygrad's PatternMatcher).

A rule is a pattern and a rewrite. A pattern describes the last node of a small subgraph and,
through ``inputs``, the nodes producing what it reads:

    conv = Pat("Conv", name="conv", uses=1)
    RULES = (Rule(Pat("Relu", inputs=(conv,)), fuse_relu),)

``fuse_relu(m)`` gets a :class:`Match` (``m["conv"]`` is the bound Conv, ``m.root`` the Relu,
``m.graph`` the graph) and returns the nodes that replace every matched node (built with
``m.graph``; they take the root's place, so giving one of them the root's output Value keeps its
readers and name), or None to decline. :class:`RewritePass` sweeps the nodes in order, tries its
rules on each, splices a rewrite in with ``Graph.replace_nodes``, and sweeps again until no rule
fires.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from tuili.errors import ConfigError
from tuili.ir import Graph
from tuili.ir.core import Node, Value

from .base import Pass, pinned_values

log = logging.getLogger(__name__)


def _op_keys(op: str | tuple[str, ...] | None) -> frozenset[tuple[str, str]] | None:
    """"Conv" / "tuili::FusedConv" -> {(domain, op_type)}."""
    if op is None:
        return None
    ops = (op,) if isinstance(op, str) else op
    return frozenset((domain, op_type) for domain, _, op_type in (o.rpartition("::") for o in ops))


@dataclass(frozen=True)
class Pat:
    """One node (or, with ``op=None``, any value) of a pattern.

    ``op``: op type(s), "domain::Op" outside the default domain. ``inputs``: patterns of the first
    inputs, in order; a node pattern there matches the producer of that input, through its first
    output. ``name`` binds the node (the value, for ``op=None``) in the Match; a name met again
    must bind the same object. ``uses``: the (first) output is read exactly that many times, all by
    nodes of this graph, and is neither a graph output nor returned by a subgraph. ``commutative``:
    two inputs, tried in either order. ``where``: any further condition on the node (value).
    """

    op: str | tuple[str, ...] | None = None
    inputs: tuple[Pat, ...] = ()
    name: str = ""
    uses: int | None = None
    commutative: bool = False
    where: Callable[[Any], bool] | None = None
    keys: frozenset[tuple[str, str]] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "keys", _op_keys(self.op))


@dataclass
class Match:
    """What a pattern bound: ``m["name"]``, the matched ``nodes`` (root first), the ``graph``."""

    graph: Graph
    pinned: Collection[int]
    bound: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.bound[name]

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def _with(self, name: str, obj: Any, node: bool) -> Match:
        m = Match(self.graph, self.pinned, dict(self.bound), self.nodes + [obj] if node else self.nodes)
        if name:
            m.bound[name] = obj
        return m

    def read_only_here(self, v: Value, times: int) -> bool:
        """``v`` is read exactly ``times`` times, by nodes of this graph, and by nothing else."""
        return (len(v.uses) == times and all(n.graph is self.graph for n, _ in v.uses)
                and not v.is_graph_output and id(v) not in self.pinned)


def _match_node(pat: Pat, node: Node, m: Match) -> Match | None:
    if pat.keys is None or (node.domain, node.op_type) not in pat.keys:  # a value pattern matches no node
        return None
    if pat.name in m.bound:
        return m if m.bound[pat.name] is node else None
    if pat.uses is not None and not (node.outputs and m.read_only_here(node.outputs[0], pat.uses)):
        return None
    if pat.where is not None and not pat.where(node):
        return None
    if len(node.inputs) < len(pat.inputs):
        return None
    orders = [(0, 1), (1, 0)] if pat.commutative else [range(len(pat.inputs))]
    found: Match | None
    for order in orders:
        found = m._with(pat.name, node, node=True)
        for p, i in zip(pat.inputs, order):
            found = _match_value(p, node.inputs[i], found)
            if found is None:
                break
        if found is not None:
            return found
    return None


def _match_value(pat: Pat, v: Value | None, m: Match) -> Match | None:
    if v is None:
        return None
    if pat.keys is not None:
        p = v.producer
        if p is None or p.graph is not m.graph or p.outputs[0] is not v:
            return None
        return _match_node(pat, p, m)
    if pat.name in m.bound:
        return m if m.bound[pat.name] is v else None
    if pat.uses is not None and not m.read_only_here(v, pat.uses):
        return None
    if pat.where is not None and not pat.where(v):
        return None
    return m._with(pat.name, v, node=False)


def match(pat: Pat, node: Node, pinned: Collection[int] = frozenset()) -> Match | None:
    """The Match of ``pat`` rooted at ``node``, or None."""
    if pat.keys is None:
        raise ConfigError(f"pattern {pat!r} cannot be a rule's root: a pattern without op types matches a value, "
                          "not a node; give it op=...")
    if (node.domain, node.op_type) not in pat.keys:
        return None  # the common case, before building a Match
    return _match_node(pat, node, Match(node.graph, pinned))


@dataclass(frozen=True)
class Rule:
    """A pattern and its rewrite: ``rewrite(match) -> replacement nodes | None``."""

    pattern: Pat
    rewrite: Callable[[Match], list[Node] | None]


class RewritePass(Pass):
    """Applies ``rules`` (the first that fires on a node wins) until none fires."""

    rules: tuple[Rule, ...] = ()

    def run(self, graph: Graph) -> bool:
        pinned = pinned_values(graph)
        changed = False
        for _ in range(len(graph.nodes) + 1):  # a sweep that fires removes nodes or disarms its rule
            gone: set[int] = set()
            for node in list(graph.nodes):
                if id(node) in gone:
                    continue
                for rule in self.rules:
                    m = match(rule.pattern, node, pinned)
                    if m is None:
                        continue
                    new = rule.rewrite(m)
                    if new is None:
                        continue
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("%s: %s -> %s", self.name, [n.label for n in m.nodes], [n.label for n in new])
                    graph.replace_nodes(m.nodes, new)
                    gone.update(id(n) for n in m.nodes)
                    break
            if not gone:
                return changed
            changed = True
        log.warning("%s: rules still firing after %d sweeps; stopping", self.name, len(graph.nodes) + 1)
        return changed


def rebuilt(node: Node, *, inputs: list[Value | None] | None = None, outputs: list[Value] | None = None,
            op_type: str | None = None, domain: str | None = None, **attrs: Any) -> Node:
    """A copy of ``node`` (name, attributes, docs) with the given parts changed, not yet in its graph.
    An attribute given as None is dropped."""
    merged = {**node.attrs, **attrs}
    new = Node(op_type or node.op_type, list(node.inputs) if inputs is None else inputs,
               list(node.outputs) if outputs is None else outputs,
               domain=node.domain if domain is None else domain,
               name=node.name or node.graph.unique_name(op_type or node.op_type),
               attrs={k: v for k, v in merged.items() if v is not None}, graph=node.graph)
    new.doc_string = node.doc_string
    new.metadata_props = dict(node.metadata_props)
    return new
