"""Constant folding: a node whose inputs are all constants is evaluated once, with tuili's own
kernels (through the registry), and its outputs become initializers.

A result is materialized only if it is no larger than ``max_elements`` or than its constant inputs
together (so a Transpose or Cast of a big weight folds, but a ConstantOfShape/Expand/Tile that turns a
few bytes into gigabytes does not); ops that expand data are size-checked *before* they run.
Random ops, ops with subgraphs and ops producing non-tensors (sequences, optionals) are left alone.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from tuili.ir import Graph
from tuili.ir.core import Node

from .base import Pass, const_of, pinned_values

log = logging.getLogger(__name__)

MAX_ELEMENTS = 1 << 20  # per folded output

_NEVER = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout",
    "If", "Loop", "Scan", "SequenceMap", "Optional", "OptionalGetElement", "OptionalHasElement",
}


def _expanded_size(node: Node, consts: list) -> int | None:
    """Output element count of data-expanding ops, computed from their (constant) inputs."""
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            return math.prod(int(d) for d in consts[0].reshape(-1))
        if op == "Expand":
            shape = np.broadcast_shapes(consts[0].shape, tuple(int(d) for d in consts[1].reshape(-1)))
            return math.prod(shape)
        if op == "Tile":
            return consts[0].size * math.prod(int(r) for r in consts[1].reshape(-1))
        if op == "Range":
            start, limit, delta = (float(c.reshape(())) for c in consts[:3])
            return max(0, math.ceil((limit - start) / delta)) if delta else None
        if op in ("Resize", "Upsample", "Pad", "OneHot", "EyeLike", "Col2Im"):
            return None  # size depends on several inputs: evaluate, then check
    except Exception:  # noqa: BLE001 - malformed inputs: let the runtime report it
        return -1
    return 0


class ConstantFolding(Pass):
    name = "constant-folding"
    level = 1

    def __init__(self, max_elements: int = MAX_ELEMENTS):
        self.max_elements = max_elements
        self._rejected: set[int] = set()  # nodes evaluated and refused: not evaluated again next round

    def run(self, graph: Graph) -> bool:
        from tuili.ops.registry import KernelContext, lookup

        changed = False
        pinned = pinned_values(graph)
        for node in list(graph.nodes):
            if node.op_type in _NEVER or any(True for _ in node.subgraphs()):
                continue
            if node.domain not in ("", "ai.onnx"):
                continue
            if not node.outputs or any(id(v) in pinned for v in node.outputs):
                continue
            if node.op_type == "Constant":
                consts: list = []
            else:
                if not any(v is not None for v in node.inputs):
                    continue  # a generator with no inputs (other than Constant): leave it
                consts = [None if v is None else const_of(v) for v in node.inputs]
                if any(c is None for v, c in zip(node.inputs, consts) if v is not None):
                    continue
            if id(node) in self._rejected:
                continue
            limit = max(self.max_elements, sum(c.size for c in consts if c is not None))
            size = _expanded_size(node, consts)
            if size is not None and (size < 0 or size > limit):
                continue
            kernel = lookup(node.op_type, node.domain, node.opset)
            if kernel is None:
                continue
            try:
                if kernel.wants_ctx:
                    ctx = KernelContext(node.op_type, node.opset, node.name, len(node.outputs))
                    result = kernel.fn(ctx, *consts, **node.attrs)
                else:
                    result = kernel.fn(*consts, **node.attrs)
            except Exception as e:  # noqa: BLE001 - leave the error to run time, where it names the feed
                log.debug("not folding %s: %s: %s", node.label, type(e).__name__, e)
                self._rejected.add(id(node))
                continue
            results = result if type(result) is tuple else (result,)
            outs = node.outputs
            if any(v.name and (v.uses or v.is_graph_output) for v in outs[len(results):]):
                continue
            if not all(isinstance(r, np.ndarray) and r.dtype != object for r, v in zip(results, outs) if v.name):
                continue
            if any(r.size > limit for r, v in zip(results, outs) if v.name and node.op_type != "Constant"):
                self._rejected.add(id(node))
                continue
            if any(v.type_proto is not None and not v.is_tensor for v in outs):
                continue
            self._replace(graph, node, results)
            changed = True
        return changed

    @staticmethod
    def _replace(graph: Graph, node: Node, results) -> None:
        """The outputs become initializers (same Values, so readers and names stay); the node goes."""
        for v, r in zip(node.outputs, results):
            if not (v.name and (v.uses or v.is_graph_output)):
                continue
            # never share memory with another constant (kernels may return views of their inputs)
            arr = np.array(r, copy=True) if r.base is not None or not r.flags.writeable else r
            dtype = v.dtype
            v.producer = None
            v.const = arr
            if dtype is not None and v.dtype != dtype:
                log.warning("folding %s: kernel produced %s for %r, declared type %s", node.label, arr.dtype,
                            v.name, dtype)
            graph.initializers[v.name] = v
        graph.remove_node(node)
