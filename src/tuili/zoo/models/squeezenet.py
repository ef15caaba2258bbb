"""SqueezeNet 1.0 (Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and
<0.5MB model size", 2016, Table 1) and SqueezeNet 1.1 (the authors' v1.1 release: 3x3/64 first conv,
earlier pooling, "2.4x less computation than 1.0" with the same accuracy).

Conventions: the paper gives parameters (1,248,424 for 1.0 by its Table 1) but no MACs; its
reference Caffe model takes 227x227 inputs. We use 224x224 (the common PyTorch convention, the
feature maps are the same size) and take the MACs of that network (1.0: ~819M, 1.1: ~352M) from
counting conv layers, which is the ~350M figure quoted for 1.1."""
from __future__ import annotations

import torch
from torch import nn

from tuili.zoo.registry import ModelSpec, register


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.squeeze(x))
        return torch.cat((self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))), 1)


def _pool():
    return nn.MaxPool2d(3, 2, ceil_mode=True)


class SqueezeNet(nn.Module):
    def __init__(self, version: str = "1_0", num_classes: int = 1000):
        super().__init__()
        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, 7, 2), nn.ReLU(inplace=True), _pool(),
                Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), _pool(),
                Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), _pool(),
                Fire(512, 64, 256, 256),
            )
        else:
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), _pool(),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), _pool(),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), _pool(),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
            )
        final = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), final, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


_CNN = dict(task="image-classification", inputs={"input": ("batch", 3, "height", "width")}, outputs=("logits",),
            default_resolution=224, min_resolution=32, num_classes=1000)

register(ModelSpec(name="squeezenet1_0", paper="Iandola et al. 2016, SqueezeNet (arXiv:1602.07360)",
                   paper_params=1_248_424, paper_macs=819e6,
                   convention="params: Table 1; MACs: not in the paper, conv-layer count at 224x224 (~0.82G)",
                   builder=lambda width, num_classes, **_: SqueezeNet("1_0", num_classes), **_CNN))
register(ModelSpec(name="squeezenet1_1", paper="Iandola et al., SqueezeNet v1.1 release (github.com/forresti/SqueezeNet)",
                   paper_params=1.24e6, paper_macs=350e6,
                   convention="v1.1 release notes: same params as 1.0 minus 1%, 2.4x less computation (~350M MACs at 224)",
                   builder=lambda width, num_classes, **_: SqueezeNet("1_1", num_classes), **_CNN))
