"""Optimizer update ops of domain ``ai.onnx.preview.training``: Adagrad, Adam, Momentum.

Each takes a learning rate R and step count T, then n tensors to optimize followed by
their gradients and optimizer states; outputs are the new tensors then the new states.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register

TRAINING_DOMAIN = "ai.onnx.preview.training"


def _groups(op, args, k):
    if len(args) % k:
        raise KernelError(f"{op}: expected a multiple of {k} tensor inputs after R and T, got {len(args)}")
    n = len(args) // k
    return [args[i * n : (i + 1) * n] for i in range(k)]


def _cast(v, like):
    return np.asarray(v).astype(like.dtype, copy=False)


@register("Adagrad", domain=TRAINING_DOMAIN, since=1)
def adagrad(r, t, *tensors, decay_factor=0.0, epsilon=1e-6, norm_coefficient=0.0):
    xs, gs, hs = _groups("Adagrad", tensors, 3)
    rate = float(np.asarray(r)) / (1.0 + float(np.asarray(t)) * decay_factor)
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        g_reg = norm_coefficient * x + g
        h_new = h + g_reg * g_reg
        x_new = x - rate * g_reg / (np.sqrt(h_new) + epsilon)
        new_x.append(_cast(x_new, x))
        new_h.append(_cast(h_new, h))
    return tuple(new_x + new_h)


@register("Momentum", domain=TRAINING_DOMAIN, since=1)
def momentum(r, t, *tensors, alpha=None, beta=None, mode="standard", norm_coefficient=None):
    if alpha is None or beta is None or norm_coefficient is None:
        raise KernelError("Momentum: attributes alpha, beta and norm_coefficient are required")
    if mode not in ("standard", "nesterov"):
        raise KernelError(f"Momentum: mode must be 'standard' or 'nesterov', got {mode!r}")
    xs, gs, vs = _groups("Momentum", tensors, 3)
    rate = float(np.asarray(r))
    beta_adj = beta if int(np.asarray(t)) > 0 else 1.0
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        g_reg = norm_coefficient * x + g
        v_new = alpha * v + beta_adj * g_reg
        if mode == "standard":
            x_new = x - rate * v_new
        else:
            x_new = x - rate * (g_reg + alpha * v_new)
        new_x.append(_cast(x_new, x))
        new_v.append(_cast(v_new, v))
    return tuple(new_x + new_v)


@register("Adam", domain=TRAINING_DOMAIN, since=1)
def adam(r, t, *tensors, alpha=0.9, beta=0.999, epsilon=1e-6, norm_coefficient=0.0, norm_coefficient_post=0.0):
    xs, gs, vs, hs = _groups("Adam", tensors, 4)
    rate = float(np.asarray(r))
    step = float(np.asarray(t))
    if step > 0:
        rate = rate * np.sqrt(1.0 - beta**step) / (1.0 - alpha**step)
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g_reg = norm_coefficient * x + g
        v_new = alpha * v + (1 - alpha) * g_reg
        h_new = beta * h + (1 - beta) * g_reg * g_reg
        x_new = x - rate * (v_new / (np.sqrt(h_new) + epsilon))
        x_new = (1 - norm_coefficient_post) * x_new
        new_x.append(_cast(x_new, x))
        new_v.append(_cast(v_new, v))
        new_h.append(_cast(h_new, h))
    return tuple(new_x + new_v + new_h)
