"""Structured channel pruning over the channel dependency graph (:mod:`.graph`).

Each removable coupled group is scored by a criterion, groups are ranked per layer (the same
fraction of every layer's channels goes) or globally (scores normalized by their layer's mean), and
the chosen groups are cut out of every Conv/Linear/BatchNorm that indexes them. The result is a
physically smaller module of the same classes, so its ONNX export is smaller and faster in any engine.

Criteria: ``l1`` / ``l2`` (norm of the producing filters, Li et al. 2017), ``bn`` (|gamma| of the
BatchNorm on the channel: network slimming, Liu et al. 2017; see :func:`bn_l1_regularizer` for its
sparsity training), ``taylor`` (first-order Taylor estimate of the loss change when the group is
removed, (sum g*w)^2 over the group's parameters, Molchanov et al. 2019; needs data).
"""
from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np

from tuili.compress.prune.graph import ChannelGraph, trace
from tuili.errors import ConfigError

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "bn", "taylor")


def bn_l1_regularizer(strength: float = 1e-4):
    """Network slimming's sparsity term: ``strength * sum |gamma|`` over every BatchNorm, for
    :func:`tuili.compress.train.fine_tune`'s ``regularizer``; it drives unimportant channels' scales to 0."""
    from torch import nn

    def term(model):
        return strength * sum(m.weight.abs().sum() for m in model.modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None)
    return term


def flops(model, example) -> int:
    """FLOPs of one forward pass on ``example`` (torch's FlopCounterMode: 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad():
        model(example)
    return int(counter.get_total_flops())


def _out_slices(graph: ChannelGraph):
    """root -> [(layer name, output index)] for every layer indexing that group by its outputs."""
    out: dict[int, list[tuple[str, int]]] = {}
    for name, lu in graph.layers.items():
        for i, e in enumerate(lu.out):
            out.setdefault(graph.find(e), []).append((name, i))
    return out


def _slice_score(module, i: int, kind: str) -> float:
    w = module.weight.detach()[i]
    return float(w.abs().sum()) if kind == "l1" else float(w.pow(2).sum().sqrt())


def group_scores(graph: ChannelGraph, criterion: str, model=None, data=None, batches: int = 8,
                 batch_size: int = 64) -> dict[int, float]:
    """Importance of each removable group (higher = keep)."""
    from torch import nn

    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    groups = graph.groups()
    slices = _out_slices(graph)
    if criterion == "taylor":
        return _taylor(graph, model, data, batches, batch_size, slices, groups)
    scores = {}
    for root, prods in groups.items():
        if criterion == "bn":
            gammas = [abs(float(graph.layers[n].module.weight.detach()[i])) for n, i in slices[root]
                      if isinstance(graph.layers[n].module, nn.modules.batchnorm._BatchNorm)]
            if gammas:
                scores[root] = float(np.mean(gammas))
                continue
        kind = "l2" if criterion == "l2" else "l1"
        scores[root] = float(np.mean([_slice_score(graph.layers[n].module, i, kind) for n, i in prods]))
    return scores


def _taylor(graph, model, data, batches, batch_size, slices, groups) -> dict[int, float]:
    import torch
    from torch import nn

    if model is None or data is None:
        raise ConfigError("the taylor criterion needs the model and training data (data=TrainData): it uses gradients")
    acc = {r: 0.0 for r in groups}
    was = model.training
    model.eval()  # BN in eval: scores reflect the deployed network
    rng = np.random.default_rng(0)
    n = len(data.x_train)
    for _ in range(batches):
        idx = rng.choice(n, size=min(batch_size, n), replace=False)
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.from_numpy(data.x_train[idx])), torch.from_numpy(data.y_train[idx]))
        loss.backward()
        for r in groups:
            total = 0.0
            for name, i in slices[r]:
                m = graph.layers[name].module
                for p in (m.weight, getattr(m, "bias", None)):
                    if p is not None and p.grad is not None:
                        total += float((p.grad[i] * p.detach()[i]).sum())
            acc[r] += total * total
    model.zero_grad()
    model.train(was)
    return acc


def _buckets(graph: ChannelGraph, groups) -> dict[tuple, list[int]]:
    """Groups by the set of layers producing them (a layer's channels, or a residual stage's)."""
    out: dict[tuple, list[int]] = {}
    for r, prods in groups.items():
        out.setdefault(tuple(sorted({n for n, _ in prods})), []).append(r)
    return out


def choose(graph: ChannelGraph, scores: dict[int, float], ratio: float, scope: str = "layer") -> set[int]:
    """The groups to remove: the ``ratio`` fraction of lowest-scoring ones per layer, or over all
    layers with scores normalized by their layer's mean (``scope="global"``); a layer keeps >= 1 channel."""
    buckets = _buckets(graph, graph.groups())
    removed: set[int] = set()
    if scope == "layer":
        for roots in buckets.values():
            k = min(int(ratio * len(roots)), len(roots) - 1)
            removed.update(sorted(roots, key=lambda r: scores[r])[:k])
        return removed
    if scope != "global":
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    norm, left = [], {}
    for key, roots in buckets.items():
        mean = float(np.mean([scores[r] for r in roots])) or 1.0
        norm += [(scores[r] / mean, r, key) for r in roots]
        left[key] = len(roots)
    k = int(ratio * len(norm))
    for _, r, key in sorted(norm):
        if len(removed) >= k:
            break
        if left[key] > 1:
            removed.add(r)
            left[key] -= 1
    return removed


def apply(model, graph: ChannelGraph, removed: set[int]) -> dict[str, tuple[int, int]]:
    """Cut the ``removed`` groups out of ``model``'s layers (looked up by name, so ``model`` may be a
    copy of the traced one). Returns layer -> (channels before, after) for layers that shrank."""
    import torch
    from torch import nn

    changes = {}
    for name, lu in graph.layers.items():
        m = model.get_submodule(name)
        keep_out = [i for i, e in enumerate(lu.out) if graph.find(e) not in removed]
        keep_in = None if lu.inp is None else [i for i, e in enumerate(lu.inp) if graph.find(e) not in removed]
        if len(keep_out) == len(lu.out) and (keep_in is None or len(keep_in) == len(lu.inp)):
            continue
        o, i_ = torch.tensor(keep_out), None if keep_in is None else torch.tensor(keep_in)

        def cut(t, dim=0, idx=o):
            return nn.Parameter(t.detach().index_select(dim, idx).clone(), requires_grad=t.requires_grad)

        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                m.weight, m.bias = cut(m.weight), cut(m.bias)
            m.running_mean = m.running_mean.index_select(0, o).clone()
            m.running_var = m.running_var.index_select(0, o).clone()
            m.num_features = len(keep_out)
        elif isinstance(m, nn.Linear):
            m.weight = cut(cut(m.weight), 1, i_) if i_ is not None else cut(m.weight)
            m.out_features, m.in_features = m.weight.shape
        else:  # Conv
            depthwise = keep_in is None
            w = cut(m.weight)
            m.weight = w if depthwise else cut(w, 1, i_)
            m.out_channels = len(keep_out)
            m.in_channels = len(keep_out) if depthwise else len(keep_in)
            if depthwise:
                m.groups = len(keep_out)
        if getattr(m, "bias", None) is not None and not isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.bias = cut(m.bias)
        changes[name] = (len(lu.out), len(keep_out))
    return changes


@dataclasses.dataclass
class StructuredResult:
    """A physically smaller module and what was cut."""

    model: object
    channels: dict[str, tuple[int, int]]  # layer -> (before, after), for the layers that shrank
    unsupported: list[str]
    ratio: float  # fraction of each layer's removable channels removed
    flops: tuple[int, int]  # before, after
    params: tuple[int, int]
    criterion: str
    history: list[dict] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        (f0, f1), (p0, p1) = self.flops, self.params
        lines = [f"structured pruning ({self.criterion}): channel ratio {self.ratio:.3f}, FLOPs {f0:,} -> {f1:,} "
                 f"({100 * f1 / max(f0, 1):.1f}%), parameters {p0:,} -> {p1:,} ({100 * p1 / max(p0, 1):.1f}%)",
                 "| layer | channels before | after |", "|---|---|---|"]
        lines += [f"| {n} | {a} | {b} |" for n, (a, b) in self.channels.items()]
        if self.unsupported:
            lines.append("left intact (unsupported):")
            lines += [f"  - {u}" for u in self.unsupported]
        return "\n".join(lines)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_channels(model, example, *, ratio: float | None = None, flops_target: float | None = None,
                   criterion: str = "l1", scope: str = "layer", data=None, epochs: float = 0.0, lr: float = 1e-3,
                   distill: bool = False, seed: int = 0, progress: bool = True) -> StructuredResult:
    """Remove channels from a deep copy of ``model`` (traced on ``example``, a batch of inputs).

    Give ``ratio`` (fraction of each layer's removable channels) or ``flops_target`` (the fraction of
    FLOPs to keep, e.g. 0.5: the ratio is found by bisection on the real pruned model). With ``data``,
    the BatchNorm statistics of the cut model are re-estimated on its train split (the surviving
    channels' inputs changed), then ``epochs`` of fine-tuning follow; ``distill`` makes the unpruned
    input model their teacher (Hinton's soft targets). The input module is never modified."""
    from tuili.compress.prune.unstructured import check_sparsity
    from tuili.compress.train import check_trainable, fine_tune, recalibrate_batchnorm

    if (ratio is None) == (flops_target is None):
        raise ConfigError("give exactly one of ratio (fraction of channels to remove) or flops_target "
                          "(fraction of FLOPs to keep)")
    if ratio is not None:
        ratio = check_sparsity(ratio, "ratio")
    else:
        flops_target = check_sparsity(flops_target, "flops_target")
    if epochs > 0 and data is None:
        raise ConfigError("fine-tuning (epochs > 0) needs training data: pass data=TrainData")
    model = copy.deepcopy(model).eval()
    check_trainable(model, "structured pruning")
    graph = trace(model, example)
    if not graph.groups():
        raise ConfigError("structured pruning: no channel of this model can be removed"
                          + ("; unsupported: " + "; ".join(graph.unsupported) if graph.unsupported else ""))
    scores = group_scores(graph, criterion, model, data)
    one = example[:1]
    f0, p0 = flops(model, one), _params(model)

    def pruned(r):
        m = copy.deepcopy(model)
        return m, apply(m, graph, choose(graph, scores, r, scope))

    if flops_target is not None:
        lo, hi = 0.0, 0.99
        for _ in range(12):  # bisection on the ratio: FLOPs fall monotonically with it
            mid = (lo + hi) / 2
            if flops(pruned(mid)[0], one) > flops_target * f0:
                lo = mid
            else:
                hi = mid
        ratio = hi
    out, changes = pruned(ratio)
    history = []
    if data is not None:
        recalibrate_batchnorm(out, data, seed=seed)
        history = fine_tune(out, data, epochs, lr=lr, seed=seed, progress=progress, desc="fine-tune pruned",
                            teacher=model if distill else None)
    out.eval()
    for u in graph.unsupported:
        log.info("structured pruning left intact: %s", u)
    return StructuredResult(out, changes, list(graph.unsupported), ratio, (f0, flops(out, one)), (p0, _params(out)),
                            criterion, history)


__all__ = ["CRITERIA", "StructuredResult", "apply", "bn_l1_regularizer", "choose", "flops", "group_scores",
           "prune_channels"]
