"""Loss family: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss (opset 12+)."""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register


def _nll(op, logp, target, weight, ignore_index, reduction):
    """logp: (N, C, d...) log-probabilities; target: (N, d...) class indices."""
    if reduction not in ("none", "sum", "mean"):
        raise KernelError(f"{op}: reduction must be none, sum or mean, got {reduction!r}")
    dt = logp.dtype
    if logp.ndim < 2 or target.shape != (logp.shape[0],) + logp.shape[2:]:
        raise KernelError(f"{op}: target shape {target.shape} does not match input shape {logp.shape} (expected (N, d1, ...))")
    c = logp.shape[1]
    tgt = np.asarray(target).astype(np.int64)
    keep = np.ones(tgt.shape, dtype=bool) if ignore_index is None else tgt != ignore_index
    safe = np.where(keep, tgt, 0)
    if np.any((safe < 0) | (safe >= c)):
        raise KernelError(f"{op}: target values must lie in [0, {c}) (or equal ignore_index={ignore_index})")
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    if weight is not None:
        w = np.where(keep, np.asarray(weight)[safe], np.zeros((), dt)).astype(dt, copy=False)
    else:
        w = keep.astype(dt)
    loss = (-picked * w).astype(dt, copy=False)
    if reduction == "none":
        return loss
    total = np.sum(loss, dtype=dt)
    if reduction == "sum":
        return np.asarray(total, dtype=dt)
    den = np.sum(w, dtype=dt)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(total / den, dtype=dt)


@register("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(x, target, weight=None, *, ignore_index=None, reduction="mean"):
    return _nll("NegativeLogLikelihoodLoss", x, target, weight, ignore_index, reduction)


@register("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(ctx, scores, labels, weights=None, *, ignore_index=None, reduction="mean"):
    dt = scores.dtype
    sc = scores.astype(np.float32) if dt.itemsize < 4 else scores  # half types: log-softmax in float32
    m = np.max(sc, axis=1, keepdims=True)
    z = sc - m
    logp = (z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))).astype(dt, copy=False)
    loss = _nll("SoftmaxCrossEntropyLoss", logp, labels, weights, ignore_index, reduction)
    if ctx.num_outputs >= 2:
        return loss, logp
    return loss
