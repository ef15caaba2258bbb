"""Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections"; Zhu &
Gupta 2017, "To prune, or not to prune"): zero the smallest weights of every Conv/Linear, globally
or per layer, in one shot or gradually with fine-tuning between steps.

Masks live on the module as torch.nn.utils.prune keeps them (``weight = weight_orig * weight_mask``,
re-applied by a forward pre-hook), so fine-tuning never revives a pruned weight; ``finalize`` bakes
the zeros in, and the exported ONNX carries them."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from tuili.errors import ConfigError

log = logging.getLogger(__name__)

SCOPES = ("global", "layer")
SCHEDULES = ("oneshot", "gradual")


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in (0, 1), got {sparsity!r}") from None
    if not 0.0 < s < 1.0:
        raise ConfigError(f"{what} must be in (0, 1) (the fraction of weights to remove), got {sparsity}")
    return s


def prunable_layers(model, exclude=(), dense_first: bool = False) -> dict[str, object]:
    """Conv and Linear modules with a trainable weight, by qualified name, minus ``exclude`` and, with
    ``dense_first``, minus the first one (in registration order: the input layer of zoo CNNs)."""
    from torch import nn

    from tuili.compress.train import check_trainable

    check_trainable(model, "pruning")
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and _weight(m).requires_grad}
    if dense_first and len(layers) > 1:
        layers.pop(next(iter(layers)))
    layers = {n: m for n, m in layers.items() if n not in exclude}
    unknown = set(exclude) - {n for n, _ in model.named_modules()}
    if unknown:
        raise ConfigError(f"exclude names no layer of the model: {', '.join(sorted(unknown))}")
    if not layers:
        raise ConfigError("pruning: the model has no Conv or Linear layer with a trainable weight")
    return layers


def _weight(m):
    return getattr(m, "weight_orig", m.weight)


def effective_weight(m):
    """The weight a layer computes with: ``weight_orig * weight_mask`` while masked (``m.weight`` is
    only refreshed by the next forward), else ``weight``."""
    return m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight


def cubic_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Zhu & Gupta's sparsity schedule s_t = s_f + (s_i - s_f)(1 - t/n)^3 for t = 1..n: prunes fast
    while many redundant weights remain, slowly near the target."""
    if steps < 1:
        raise ConfigError(f"the gradual schedule needs at least 1 step, got {steps}")
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def magnitude_masks(layers: dict, sparsity: float, scope: str = "global") -> dict:
    """0/1 masks removing the ``sparsity`` fraction of smallest-|w| weights, over all layers together
    (global) or in each layer (layer). Weights already pruned (zero) go first, so masks only grow."""
    import torch

    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    mags = {n: effective_weight(m).detach().abs() for n, m in layers.items()}
    if scope == "layer":
        return {n: _keep_largest(a, int(round(sparsity * a.numel()))) for n, a in mags.items()}
    flat = torch.cat([a.flatten() for a in mags.values()])
    k = int(round(sparsity * flat.numel()))
    keep = _keep_largest(flat, k)
    out, at = {}, 0
    for n, a in mags.items():
        out[n] = keep[at:at + a.numel()].view_as(a)
        at += a.numel()
    return out


def _keep_largest(a, k: int):
    import torch

    mask = torch.ones(a.numel(), dtype=a.dtype)
    if k > 0:
        mask[torch.argsort(a.flatten(), stable=True)[:k]] = 0
    return mask.view_as(a)


def apply_masks(layers: dict, masks: dict) -> None:
    """Attach (or tighten) the masks with torch.nn.utils.prune; gradients of pruned weights are zero."""
    from torch.nn.utils import prune

    for n, m in layers.items():
        if hasattr(m, "weight_orig"):
            m.weight_mask.copy_(masks[n])
        else:
            prune.custom_from_mask(m, "weight", masks[n])


def finalize(model) -> None:
    """Bake the masks into the weights (zeros) and drop the pruning re-parametrization."""
    from torch.nn.utils import prune

    for m in model.modules():
        if hasattr(m, "weight_orig"):
            prune.remove(m, "weight")


@dataclasses.dataclass
class LayerSparsity:
    name: str
    shape: tuple
    params: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / max(self.params, 1)


def sparsity_table(model, layers=None) -> list[LayerSparsity]:
    """Per Conv/Linear layer: shape, weights, zeros."""
    layers = layers if layers is not None else prunable_layers(model)
    out = []
    for n, m in layers.items():
        w = effective_weight(m).detach()
        out.append(LayerSparsity(n, tuple(w.shape), w.numel(), int((w == 0).sum())))
    return out


def storage_bytes(weights: np.ndarray | list, value_bytes: int = 4) -> dict[str, int]:
    """Bytes to store these weight tensors: dense; CSR (values + int32 column indices + int32 row
    pointers, rows = output channels); bitmask (one bit per weight + the nonzero values)."""
    dense = csr = bitmask = 0
    for w in weights if isinstance(weights, list) else [weights]:
        w = np.asarray(w)
        rows = w.shape[0] if w.ndim > 1 else 1
        nnz = int(np.count_nonzero(w))
        dense += w.size * value_bytes
        csr += nnz * (value_bytes + 4) + (rows + 1) * 4
        bitmask += -(-w.size // 8) + nnz * value_bytes
    return {"dense": dense, "csr": csr, "bitmask": bitmask}


@dataclasses.dataclass
class PruneResult:
    """What pruning did: the pruned module (masks baked in), per-layer sparsity, and the schedule run."""

    model: object
    layers: list[LayerSparsity]
    schedule: list[float]
    history: list[dict] = dataclasses.field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return sum(r.zeros for r in self.layers) / max(sum(r.params for r in self.layers), 1)

    def storage(self) -> dict[str, int]:
        return storage_bytes([m.weight.detach().numpy() for n, m in self.model.named_modules()
                              if n in {r.name for r in self.layers}])

    def summary(self) -> str:
        s = self.storage()
        lines = [f"unstructured pruning: {100 * self.sparsity:.1f}% of {sum(r.params for r in self.layers):,} "
                 f"Conv/Linear weights are zero (schedule {', '.join(f'{x:.3f}' for x in self.schedule)})",
                 "| layer | shape | weights | sparsity % |", "|---|---|---|---|"]
        lines += [f"| {r.name} | {'x'.join(map(str, r.shape))} | {r.params:,} | {100 * r.sparsity:.1f} |" for r in self.layers]
        lines.append(f"weight storage: dense {s['dense']:,} B, CSR {s['csr']:,} B, bitmask {s['bitmask']:,} B")
        return "\n".join(lines)


def prune_unstructured(model, sparsity: float, *, scope: str = "global", schedule: str = "oneshot", steps: int = 4,
                       data=None, epochs: float = 0.0, final_epochs: float | None = None, lr: float = 1e-3,
                       exclude=(), dense_first: bool = True, distill: bool = False, seed: int = 0,
                       progress: bool = True) -> PruneResult:
    """Magnitude-prune a deep copy of ``model`` to ``sparsity`` (fraction of Conv/Linear weights zeroed).

    ``schedule="oneshot"`` prunes once, re-estimates the BatchNorm statistics, then fine-tunes
    ``final_epochs`` (default ``epochs``) on ``data``'s train split. ``"gradual"`` is Zhu & Gupta's
    recipe: one training run of ``epochs`` + ``final_epochs`` (default ``epochs``) epochs under one
    cosine learning rate, the masks tightened ``steps`` times along the cubic schedule, evenly over
    the first ``epochs`` (pruning while training: each step removes few weights and the next
    updates repair them), then ``final_epochs`` at the target sparsity. Without data the gradual
    schedule only prunes, ``steps`` times. Masks hold pruned weights at zero throughout (their
    gradient is zero). ``distill`` makes the dense input model the teacher of every fine-tune
    (Hinton's soft targets, :func:`tuili.compress.train.fine_tune`). ``dense_first`` keeps the first
    layer dense (common practice since Zhu & Gupta 2017 / Gale et al. 2019: it holds few weights, and
    3x3 filters on a grey input lose their shape: glyphs_cnn's conv1 at 50% alone costs tens of
    points); ``sparsity`` is then over the other layers. The input module is never modified."""
    import copy

    from tuili.compress.train import fine_tune, recalibrate_batchnorm, steps_per_epoch

    sparsity = check_sparsity(sparsity)
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if (epochs > 0 or (final_epochs or 0) > 0) and data is None:
        raise ConfigError("fine-tuning (epochs > 0) needs training data: pass data=TrainData")
    teacher = model if distill else None
    model = copy.deepcopy(model)
    layers = prunable_layers(model, exclude, dense_first)
    targets = [sparsity] if schedule == "oneshot" else cubic_schedule(sparsity, steps)
    final = epochs if final_epochs is None else final_epochs
    history: list[dict] = []
    if schedule == "oneshot" or data is None or epochs <= 0:
        for target in targets:
            apply_masks(layers, magnitude_masks(layers, target, scope))
        if data is not None:
            recalibrate_batchnorm(model, data, seed=seed)
        log.info("pruned to %.1f%% in %d step(s)", 100 * sparsity, len(targets))
        if final > 0:
            history = fine_tune(model, data, final, lr=lr, seed=seed, progress=progress, teacher=teacher,
                                desc=f"fine-tune at {100 * sparsity:.0f}%")
    else:
        ramp = epochs * steps_per_epoch(data)
        at = {int(round(i * ramp / steps)): t for i, t in enumerate(targets)}  # step -> sparsity from then on

        def tighten(step: int) -> None:
            if step in at:
                apply_masks(layers, magnitude_masks(layers, at[step], scope))
                log.debug("step %d: pruned to %.1f%%", step, 100 * at[step])

        history = fine_tune(model, data, epochs + final, lr=lr, seed=seed, progress=progress, before_step=tighten,
                            teacher=teacher, desc=f"gradual pruning to {100 * sparsity:.0f}%")
        apply_masks(layers, magnitude_masks(layers, sparsity, scope))  # the target, even if rounding cut a step
    finalize(model)
    model.eval()
    return PruneResult(model, sparsity_table(model, layers), targets, history)


__all__ = ["LayerSparsity", "PruneResult", "SCHEDULES", "SCOPES", "apply_masks", "check_sparsity", "cubic_schedule",
           "effective_weight", "finalize", "magnitude_masks", "prunable_layers", "prune_unstructured", "sparsity_table",
           "storage_bytes"]
