"""ResNet-18 and ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
Table 1: 1.8 and 3.8 GFLOPs = multiply-adds at 224; 11.7M and 25.6M params).

Faithful to the paper: the stride-2 of a bottleneck sits on its first 1x1 conv (the later
"v1.5" moves it to the 3x3, which costs 4.1 GMACs instead of 3.8); projection shortcuts (option B)
where the shape changes."""
from __future__ import annotations

import torch
from torch import nn

from tuili.zoo.layers import ConvBNAct, init_cnn
from tuili.zoo.registry import ModelSpec, register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = ConvBNAct(cin, planes, 3, stride)
        self.conv2 = ConvBNAct(planes, planes, 3, act=None)
        self.shortcut = _shortcut(cin, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out = planes * 4
        self.conv1 = ConvBNAct(cin, planes, 1, stride)
        self.conv2 = ConvBNAct(planes, planes, 3)
        self.conv3 = ConvBNAct(planes, out, 1, act=None)
        self.shortcut = _shortcut(cin, out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return ConvBNAct(cin, cout, 1, stride, act=None)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages = []
        c = 64
        for i, n in enumerate(layers):
            planes = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(c, planes, 2 if (j == 0 and i > 0) else 1))
                c = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_cnn(self)
        bound = 1.0 / c**0.5
        nn.init.uniform_(self.fc.weight, -bound, bound)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class CifarResNet(nn.Module):
    """The CIFAR-10 ResNets of Sec. 4.2: a 3x3 stem and three stages of ``n`` basic blocks with
    16, 32, 64 channels (x ``width``), stride 2 at stages 2 and 3; 6n+2 weighted layers."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, n: int = 1, width: float = 1.0):
        super().__init__()
        widths = [max(4, int(c * width)) for c in (16, 32, 64)]
        self.stem = ConvBNAct(in_channels, widths[0], 3)
        blocks, c = [], widths[0]
        for i, planes in enumerate(widths):
            for j in range(n):
                blocks.append(BasicBlock(c, planes, 2 if (j == 0 and i > 0) else 1))
                c = planes
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_cnn(self)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


_CNN = dict(task="image-classification", inputs={"input": ("batch", 3, "height", "width")}, outputs=("logits",),
            default_resolution=224, min_resolution=32, num_classes=1000, paper="He et al. 2016, Deep Residual Learning (arXiv:1512.03385)")

register(ModelSpec(name="resnet18", paper_params=11.7e6, paper_macs=1.8e9,
                   convention="Table 1 FLOPs (multiply-adds) at 224; params as commonly cited (11.69M)",
                   builder=lambda width, num_classes, **_: ResNet(BasicBlock, (2, 2, 2, 2), num_classes), **_CNN))
register(ModelSpec(name="resnet50", paper_params=25.6e6, paper_macs=3.8e9,
                   convention="Table 1 FLOPs (multiply-adds) at 224, stride on the 1x1 conv as in the paper",
                   builder=lambda width, num_classes, **_: ResNet(Bottleneck, (3, 4, 6, 3), num_classes), **_CNN))
