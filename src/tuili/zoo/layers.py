"""Building blocks shared by the CNNs of the zoo (plain torch)."""
from __future__ import annotations

import math

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%.

    This is the rounding rule of the MobileNetV2/V3, EfficientNet and GhostNet
    reference code, so width multipliers give the papers' channel counts.
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6, the gate of MobileNetV3 and GhostNet."""

    def forward(self, x):
        return nn.functional.relu6(x + 3.0) / 6.0


def activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    return {
        "relu": lambda: nn.ReLU(inplace=True),
        "relu6": lambda: nn.ReLU6(inplace=True),
        "hswish": lambda: nn.Hardswish(),
        "silu": lambda: nn.SiLU(),
        "hsigmoid": HardSigmoid,
        "sigmoid": nn.Sigmoid,
    }[name]()


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: str | None = "relu"):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            activation(act),
        )


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: global pool -> 1x1 reduce -> act -> 1x1 expand -> gate -> scale."""

    def __init__(self, channels: int, reduced: int, act: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = activation(gate)

    def forward(self, x):
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * s


class ClassifierHead(nn.Sequential):
    """Global average pool -> flatten -> (dropout) -> linear."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(cin, num_classes))
        super().__init__(*layers)


def init_cnn(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out) convolutions, unit BN, small-normal linears: the usual CNN init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, example: torch.Tensor) -> None:
    """Set BatchNorm running statistics from one forward pass in train mode.

    A randomly initialised network has running_mean=0 / running_var=1, which
    makes every BN an identity and lets activations grow or vanish with depth.
    One pass over a random batch (cumulative average, momentum=None) gives the
    statistics a trained network would have for such inputs, so outputs stay
    well-scaled and BN folding in the optimizer has real numbers to fold.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    # Dropout must not fire; only BN layers need training mode.
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    model(example)
    for m, (mom, _) in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["make_divisible", "HardSigmoid", "activation", "ConvBNAct", "SqueezeExcite", "ClassifierHead", "init_cnn", "calibrate_batchnorm", "ceil_div", "math"]
