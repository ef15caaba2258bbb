"""The channel dependency graph of a torch module, traced with torch.fx.

Every channel of every traced tensor is an element of a union-find; layers that must agree on a
channel join its elements: a residual Add joins the channels of its operands, a depthwise conv
and a BatchNorm pass their input's channels through, Concat lays its inputs' channels side by
side, Flatten before a Linear maps each channel to its H*W features. A connected set of elements
is a *coupled group*: removing it means removing its channel from every Conv/Linear/BatchNorm that
touches it, and the network stays consistent. A group is blocked (kept) when it reaches something
the graph cannot rewrite: the model's input or output, an op it does not know (listed in
``unsupported``), a grouped conv, a module called twice.
"""
from __future__ import annotations

import dataclasses
import logging

from tuili.errors import UnsupportedModelError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerUse:
    """How one parametrised module indexes channels: ``out`` elements along its output dimension
    (weight dim 0, bias, BN vectors) and ``inp`` along weight dim 1 (None where it has none)."""

    name: str
    module: object
    out: list[int]
    inp: list[int] | None


@dataclasses.dataclass
class ChannelGraph:
    layers: dict[str, LayerUse]
    parent: list[int]
    blocked: set[int]  # roots of groups that may not be removed
    producers: dict[int, list[tuple[str, int]]]  # root -> (conv/linear name, output index) producing it
    unsupported: list[str]  # "node (op): reason", for the report

    def find(self, e: int) -> int:
        p = self.parent
        while p[e] != e:
            p[e] = p[p[e]]
            e = p[e]
        return e

    def groups(self) -> dict[int, list[tuple[str, int]]]:
        """Removable groups: root -> the (layer, output channel) pairs producing it."""
        return {r: v for r, v in self.producers.items() if r not in self.blocked}


_PASS_MODULES = ("ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Hardsigmoid", "SiLU", "Sigmoid", "Tanh", "GELU",
                 "ELU", "Mish", "Softplus", "Dropout", "Dropout2d", "Identity", "MaxPool2d", "AvgPool2d",
                 "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool1d")
_PASS_FUNCS = {"relu", "relu6", "relu_", "leaky_relu", "hardswish", "hardsigmoid", "silu", "sigmoid", "tanh", "gelu",
               "elu", "mish", "softplus", "dropout", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
               "adaptive_max_pool2d", "contiguous", "clamp", "clip", "hardtanh", "neg", "abs"}
_BINARY = {"add", "sub", "mul", "div", "truediv", "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_"}


def _fname(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _symbolic_trace(model):
    from torch import fx

    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx's TraceError and whatever the model's own code raises on a Proxy
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnsupportedModelError(f"{type(model).__name__}: torch.fx cannot trace this model ({first}); structured "
                                    "pruning and BatchNorm folding need a traceable forward (no control flow on tensor "
                                    "values); use unstructured pruning instead") from e


def trace(model, example) -> ChannelGraph:
    """Trace ``model`` on ``example`` (a batch of inputs) and build its channel graph."""
    import torch
    from torch import fx, nn
    from torch.fx.passes.shape_prop import ShapeProp

    gm = _symbolic_trace(model)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # a wrong example shape, mostly
        raise UnsupportedModelError(f"{type(model).__name__}: running the traced model on an example of shape "
                                    f"{tuple(example.shape)} failed ({e}); give an example batch the model accepts") from e
    modules = dict(gm.named_modules())
    parent: list[int] = []
    blocked: set[int] = set()
    producers: dict[int, list[tuple[str, int]]] = {}
    layers: dict[str, LayerUse] = {}
    unsupported: list[str] = []
    space: dict[object, list[int]] = {}  # fx node -> element ids of its channel dim (dim 1)
    calls: dict[str, int] = {}

    def new(n: int) -> list[int]:
        start = len(parent)
        parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(e):
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    def shape(node):
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def channels_of(node):
        s = shape(node)
        return s[1] if s is not None and len(s) >= 2 else None

    def block(elems, why: str):
        for e in elems:
            blocked.add(e)
        if why and why not in unsupported:
            unsupported.append(why)

    def fresh_out(node):
        c = channels_of(node)
        if c is not None:
            space[node] = new(c)

    def tensor_args(node):
        return [a for a in node.all_input_nodes if a in space]

    def unknown(node, what: str):
        why = f"{node.name} ({what}): channels pass through an op the pruner cannot rewrite; left intact"
        for a in tensor_args(node):
            block(space[a], why)
        fresh_out(node)
        if node in space:
            block(space[node], why)

    def flatten(node, x, start: int, end: int):
        s = shape(x)
        if x not in space or s is None:
            return unknown(node, "flatten")
        start, end = start % len(s), end % len(s)
        if start >= 2:  # spatial dims only: channels unchanged
            space[node] = space[x]
        elif start == 1 and end == len(s) - 1:
            hw = 1
            for d in s[2:]:
                hw *= d
            if hw == 1:
                space[node] = space[x]
            else:  # feature f of the flat vector is channel f // hw
                space[node] = new(len(space[x]) * hw)
                for f, e in enumerate(space[node]):
                    union(space[x][f // hw], e)
        else:
            unknown(node, f"flatten({start}, {end})")

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            fresh_out(node)
            if node in space:
                block(space[node], None)  # the model's input channels are fixed
        elif node.op == "output":
            for a in node.all_input_nodes:
                if a in space:
                    block(space[a], None)
        elif node.op == "get_attr":
            fresh_out(node)
            if node in space:
                block(space[node], f"{node.name} (parameter used as a tensor): left intact")
        elif node.op == "call_module":
            mod = modules[node.target]
            calls[node.target] = calls.get(node.target, 0) + 1
            kind = type(mod).__name__
            x = node.args[0] if node.args else None
            xin = space.get(x)
            if calls[node.target] > 1 and any(p.numel() for p in mod.parameters(recurse=False)):
                if node.target in layers:
                    lu = layers.pop(node.target)
                    block(lu.out + (lu.inp or []), None)
                unknown(node, f"{kind} {node.target} called twice")
            elif isinstance(mod, nn.modules.conv._ConvNd) and not isinstance(mod, nn.modules.conv._ConvTransposeNd) \
                    and xin is not None:
                g = mod.groups
                if g == 1:
                    space[node] = new(mod.out_channels)
                    layers[node.target] = LayerUse(node.target, mod, space[node], xin)
                    for i, e in enumerate(space[node]):
                        producers.setdefault(e, []).append((node.target, i))
                elif g == mod.in_channels == mod.out_channels:  # depthwise: channel c in -> channel c out
                    space[node] = xin
                    layers[node.target] = LayerUse(node.target, mod, xin, None)
                else:
                    unknown(node, f"grouped Conv {node.target}, groups={g}")
                    layers.pop(node.target, None)
            elif isinstance(mod, nn.Linear) and xin is not None and len(shape(x) or ()) == 2:
                space[node] = new(mod.out_features)
                layers[node.target] = LayerUse(node.target, mod, space[node], xin)
                for i, e in enumerate(space[node]):
                    producers.setdefault(e, []).append((node.target, i))
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and xin is not None:
                space[node] = xin
                layers[node.target] = LayerUse(node.target, mod, xin, None)
            elif kind in _PASS_MODULES and xin is not None and channels_of(node) == len(xin):
                space[node] = xin
            elif isinstance(mod, nn.Flatten) and xin is not None:
                flatten(node, x, mod.start_dim, mod.end_dim)
            else:
                unknown(node, f"{kind} {node.target}")
        else:  # call_function / call_method
            name = _fname(node.target)
            args = tensor_args(node)
            c_out = channels_of(node)
            if name in ("size", "dim", "getattr"):
                continue
            if name in _PASS_FUNCS and args and channels_of(node.args[0]) == c_out and node.args[0] in space:
                space[node] = space[node.args[0]]
            elif name in _BINARY and args and c_out is not None:
                same = [a for a in args if channels_of(a) == c_out and len(shape(a)) == len(shape(node))]
                others = [a for a in args if a not in same and channels_of(a) not in (1, None)]
                if not same or others:
                    unknown(node, name)
                    continue
                space[node] = space[same[0]]
                for a in same[1:]:
                    for e1, e2 in zip(space[same[0]], space[a]):
                        union(e1, e2)
            elif name == "cat" and args:
                dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
                ins = node.args[0]
                if dim % len(shape(node)) == 1 and all(a in space for a in ins):
                    space[node] = [e for a in ins for e in space[a]]
                else:
                    unknown(node, f"cat on dim {dim}")
            elif name == "flatten" and args:
                start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
                end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
                flatten(node, node.args[0], start, end)
            elif not args:
                fresh_out(node)
                if node in space:
                    block(space[node], f"{node.name} ({name}): a tensor made inside the model; left intact")
            else:
                unknown(node, name)

    roots: dict[int, list[tuple[str, int]]] = {}
    for e, prods in producers.items():
        roots.setdefault(find(e), []).extend(prods)
    blocked_roots = {find(e) for e in blocked}
    graph = ChannelGraph(layers, parent, blocked_roots, roots, unsupported)
    log.debug("channel graph: %d layers, %d removable groups, %d unsupported", len(layers), len(graph.groups()),
              len(unsupported))
    return graph
