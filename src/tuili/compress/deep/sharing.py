"""Trained quantization by weight sharing (Deep Compression, stage 2): the nonzero weights of each
Conv/Linear are clustered by k-means (linear initialization over [min, max], which keeps the rare
large weights the paper found matter most), every weight is replaced by its centroid, and the
centroids are fine-tuned: ``weight = centroids[index] * mask`` is recomputed in a forward pre-hook,
so autograd sums the gradients of each cluster's weights into its centroid, as the paper does."""
from __future__ import annotations

import logging

import numpy as np

from tuili.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BITS = {"conv": 5, "fc": 4}  # the paper's AlexNet setting: 32 shared weights per conv, 16 per fc


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k'], index per value) of 1-D k-means with linear initialization (k' <= k: empty
    clusters are dropped)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    c = np.linspace(v.min(), v.max(), k)
    for _ in range(iters):
        order = np.argsort(c)
        c = c[order]
        idx = np.searchsorted((c[1:] + c[:-1]) / 2, v)  # nearest centroid of sorted 1-D centroids
        sums, counts = np.bincount(idx, v, len(c)), np.bincount(idx, minlength=len(c))
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        if np.allclose(new, c):
            break
        c = new
    idx = np.searchsorted((c[1:] + c[:-1]) / 2, v)
    used = np.unique(idx)
    remap = np.full(len(c), -1)
    remap[used] = np.arange(len(used))
    return c[used].astype(np.float32), remap[idx]


def _bits_for(module, bits: dict) -> int:
    from torch import nn

    return bits["fc"] if isinstance(module, nn.Linear) else bits["conv"]


def share_weights(model, bits: dict | None = None, exclude=()) -> dict[str, int]:
    """Cluster every Conv/Linear weight of ``model`` in place and install the shared-weight
    re-parametrization (trainable ``weight_centroids``). Returns layer -> number of clusters."""
    import torch
    from torch import nn

    bits = {**DEFAULT_BITS, **(bits or {})}
    for key, b in bits.items():
        if key not in DEFAULT_BITS or not 1 <= int(b) <= 8:
            raise ConfigError(f"weight-sharing bits must be {{'conv': 1..8, 'fc': 1..8}}, got {key}={b}")
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or name in exclude:
            continue
        w = m.weight.detach().numpy()
        mask = w != 0
        centroids, idx = kmeans_1d(w[mask], 1 << _bits_for(m, bits))
        if not len(centroids):  # a layer global pruning emptied: one centroid (0) keeps the index valid
            centroids = np.zeros(1, np.float32)
        index = np.zeros(w.shape, np.int64)
        index[mask] = idx
        del m._parameters["weight"]
        m.weight_centroids = nn.Parameter(torch.from_numpy(centroids))
        m.register_buffer("weight_index", torch.from_numpy(index))
        m.register_buffer("weight_mask", torch.from_numpy(mask.astype(np.float32)))
        m.weight = _shared(m)
        m._share_hook = m.register_forward_pre_hook(lambda mod, _args: setattr(mod, "weight", _shared(mod)))
        out[name] = len(centroids)
    if not out:
        raise ConfigError("weight sharing: the model has no Conv or Linear layer")
    return out


def _shared(m):
    return m.weight_centroids[m.weight_index] * m.weight_mask


def unshare(model) -> None:
    """Bake the shared weights into ordinary ``weight`` parameters (values stay the centroids)."""
    from torch import nn

    for m in model.modules():
        if hasattr(m, "_share_hook"):
            m._share_hook.remove()
            w = _shared(m).detach().clone()
            del m.weight, m._share_hook, m.weight_centroids
            del m._buffers["weight_index"], m._buffers["weight_mask"]
            m.weight = nn.Parameter(w)


__all__ = ["DEFAULT_BITS", "kmeans_1d", "share_weights", "unshare"]
