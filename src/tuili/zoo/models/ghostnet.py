"""GhostNet (Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020).
Table 7: GhostNet 1.0x = 5.2M params, 141M FLOPs (multiply-adds) at 224x224."""
from __future__ import annotations

import math

import torch
from torch import nn

from tuili.zoo.layers import ConvBNAct, SqueezeExcite, init_cnn, make_divisible
from tuili.zoo.registry import ModelSpec, register


class GhostModule(nn.Module):
    """Ghost module (Fig. 2b): a primary 1x1 conv makes m = ceil(n/s) intrinsic maps, a cheap
    depthwise dxd conv makes the (s-1)*m ghost maps; both are concatenated (and cut to n)."""

    def __init__(self, cin: int, cout: int, ratio: int = 2, dw_size: int = 3, relu: bool = True):
        super().__init__()
        self.cout = cout
        init = math.ceil(cout / ratio)
        new = init * (ratio - 1)
        act = "relu" if relu else None
        self.primary = ConvBNAct(cin, init, 1, act=act)
        self.cheap = ConvBNAct(init, new, dw_size, groups=init, act=act)

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat((x1, self.cheap(x1)), dim=1)
        return out if out.shape[1] == self.cout else out[:, : self.cout]


class GhostBottleneck(nn.Module):
    """Fig. 3: Ghost module (ReLU) -> [depthwise stride-2] -> [SE] -> Ghost module (linear), plus shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int, se: float):
        super().__init__()
        layers: list[nn.Module] = [GhostModule(cin, mid, relu=True)]
        if stride > 1:
            layers.append(ConvBNAct(mid, mid, k, stride, groups=mid, act=None))
        if se:
            layers.append(SqueezeExcite(mid, make_divisible(mid * se, 4), act="relu", gate="hsigmoid"))
        layers.append(GhostModule(mid, cout, relu=False))
        self.body = nn.Sequential(*layers)
        if cin == cout and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(ConvBNAct(cin, cin, k, stride, groups=cin, act=None), ConvBNAct(cin, cout, 1, act=None))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


CONFIG = [  # Table 7: kernel, expansion (#exp), output, SE ratio, stride
    (3, 16, 16, 0, 1),
    (3, 48, 24, 0, 2),
    (3, 72, 24, 0, 1),
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    (3, 240, 80, 0, 2),
    (3, 200, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 480, 112, 0.25, 1),
    (3, 672, 112, 0.25, 1),
    (5, 672, 160, 0.25, 2),
    (5, 960, 160, 0, 1),
    (5, 960, 160, 0.25, 1),
    (5, 960, 160, 0, 1),
    (5, 960, 160, 0.25, 1),
]


class GhostNet(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        c = make_divisible(16 * width, 4)
        layers: list[nn.Module] = [ConvBNAct(3, c, 3, 2)]
        for k, exp, out, se, s in CONFIG:
            out, mid = make_divisible(out * width, 4), make_divisible(exp * width, 4)
            layers.append(GhostBottleneck(c, mid, out, k, s, se))
            c = out
        last = make_divisible(960 * width, 4)
        layers.append(ConvBNAct(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(last, 1280, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)
        init_cnn(self)

    def forward(self, x):
        x = self.act(self.conv_head(self.pool(self.features(x))))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


register(ModelSpec(
    name="ghostnet_1_0", task="image-classification", paper="Han et al. 2020, GhostNet (arXiv:1911.11907)",
    inputs={"input": ("batch", 3, "height", "width")}, outputs=("logits",), default_resolution=224, min_resolution=32,
    num_classes=1000, width_range=(0.25, 2.0), paper_params=5.2e6, paper_macs=141e6,
    convention="Table 7 at 224; FLOPs in the paper are multiply-adds",
    builder=lambda width, num_classes, **_: GhostNet(width, num_classes)))
