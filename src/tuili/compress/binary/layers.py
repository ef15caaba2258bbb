"""BNN / XNOR-Net layers in torch, and :func:`binarize` that puts them into a model.

``BinaryConv2d`` computes ``conv(Sign(BN(x)), alpha * Sign(W)) + b``:

* weights: ``Sign(W)`` (W >= 0 -> +1) times XNOR-Net's per-output-channel ``alpha = mean |W|``;
* activations (``binarize_input=True``, BNN / XNOR-Net): a BatchNorm re-centres the input per
  channel (a learned threshold: what feeds it is often a ReLU output, all >= 0) and ``Sign`` binarizes it;
  ``False`` binarizes the weights only (BWN), and then only the float form exists;
* training uses the straight-through estimator: the forward pass binarizes, the backward pass lets
  the gradient through where |x| <= 1 (Courbariaux et al. 2016's hard-tanh STE); eval mode is plain
  ``Sign`` (ONNX ``Sign``: 0 -> 0) with the constant ``alpha * Sign(W)``, which is what ONNX export records.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn import functional as F

from tuili.errors import ConfigError

log = logging.getLogger(__name__)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Sign(x) forward, clipped identity backward (gradient 1 where |x| <= 1, else 0)."""
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (torch.sign(x) - clipped).detach()


def binary_weight(w: torch.Tensor) -> torch.Tensor:
    """``alpha * Sign(W)`` with alpha = mean |W| per output channel (STE on the sign while training)."""
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    signs = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    if torch.is_grad_enabled() and w.requires_grad:
        clipped = w.clamp(-1.0, 1.0)
        signs = clipped + (signs - clipped).detach()
    return alpha * signs


class BinaryConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, binarize_input: bool = True):
        super().__init__()
        if conv.groups != 1:
            raise ConfigError(f"BinaryConv2d: grouped convolution (groups={conv.groups}) is not binarized; keep it float")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        if isinstance(self.padding, str):
            raise ConfigError(f"BinaryConv2d: padding={self.padding!r} is not supported; use explicit integer padding")
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.norm = nn.BatchNorm2d(conv.in_channels) if binarize_input else None

    def forward(self, x):
        if self.norm is not None:
            x = self.norm(x)
            x = sign_ste(x) if self.training else torch.sign(x)
        return F.conv2d(x, binary_weight(self.weight), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel={tuple(self.weight.shape[2:])}, stride={self.stride}, "
                f"padding={self.padding}, binary_input={self.norm is not None}")


def binarize(model, *, keep_first: bool = True, binarize_input: bool = True, exclude: tuple[str, ...] = ()):
    """A copy of ``model`` with its Conv2d layers replaced by :class:`BinaryConv2d`. Kept float: the
    first convolution (``keep_first``), every Linear (the classifier: the last layer), grouped or
    depthwise convolutions, and the layers named in ``exclude``. ``model`` itself is not modified.
    Returns (binarized model, names of the binarized layers)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"{type(model).__name__} has no trainable weights to binarize; pass a torch module with "
                          "parameters, e.g. from tuili.zoo.create")
    model = copy.deepcopy(model)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    unknown = set(exclude) - {n for n, _ in convs}
    if unknown:
        raise ConfigError(f"exclude names no Conv2d of the model: {', '.join(sorted(unknown))}; its convolutions: "
                          + ", ".join(n for n, _ in convs))
    done, kept = [], []
    for i, (name, conv) in enumerate(convs):
        if (keep_first and i == 0) or name in exclude or conv.groups != 1 or isinstance(conv.padding, str):
            kept.append(name)
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, BinaryConv2d(conv, binarize_input))
        done.append(name)
    if not done:
        raise ConfigError(f"{type(model).__name__}: no convolution left to binarize (kept float: {', '.join(kept) or 'none'})")
    log.info("binarized %d conv layers (%s); kept float: %s", len(done), ", ".join(done), ", ".join(kept) or "none")
    return model, done


class _Sign(nn.Module):
    def forward(self, x):
        return torch.sign(x)


def deployable(model):
    """A copy of a binarized ``model`` for export: each BinaryConv2d becomes ``BatchNorm -> Sign -> Conv2d``
    with the constant weight ``alpha * Sign(W)``, plain modules the ONNX exporter records as BatchNormalization,
    Sign and Conv (and folds the BatchNorm that follows into that Conv, as for any Conv)."""
    model = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if not isinstance(m, BinaryConv2d):
            continue
        conv = nn.Conv2d(m.in_channels, m.out_channels, tuple(m.weight.shape[2:]), m.stride, m.padding, m.dilation,
                         bias=m.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(binary_weight(m.weight.detach()))
            if m.bias is not None:
                conv.bias.copy_(m.bias)
        parts = [conv] if m.norm is None else [m.norm, _Sign(), conv]
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Sequential(*parts))
    return model
