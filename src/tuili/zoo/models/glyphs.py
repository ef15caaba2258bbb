"""Models for the glyphs data set (:mod:`tuili.data.glyphs`: 62 characters, 1 x 32 x 32, values in [0, 1]).

``glyphs_cnn`` is a plain 5-conv VGG-style CNN; ``resnet8_glyphs`` is the CIFAR ResNet of He et al.
(6n+2 layers, n = 1) on the same input. Both end in global average pooling, so they accept any side
that survives their down-sampling."""
from __future__ import annotations

import torch
from torch import nn

from tuili.zoo.layers import ConvBNAct, init_cnn
from tuili.zoo.models.resnet import CifarResNet
from tuili.zoo.registry import ModelSpec, register


class GlyphsCNN(nn.Module):
    def __init__(self, num_classes: int = 62, width: float = 1.0):
        super().__init__()
        c1, c2, c3 = (max(4, int(c * width)) for c in (16, 32, 64))
        self.features = nn.Sequential(
            ConvBNAct(1, c1, 3), ConvBNAct(c1, c1, 3), nn.MaxPool2d(2),
            ConvBNAct(c1, c2, 3), ConvBNAct(c2, c2, 3), nn.MaxPool2d(2),
            ConvBNAct(c2, c3, 3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(c3, num_classes)
        init_cnn(self)

    def forward(self, x):
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


_GLYPHS = dict(task="image-classification", inputs={"input": ("batch", 1, "height", "width")}, outputs=("logits",),
               default_resolution=32, in_channels=1, num_classes=62, dataset="glyphs")

register(ModelSpec(
    name="glyphs_cnn", paper="tuili: a 5-conv CNN for the glyphs data set (no paper)", min_resolution=4,
    width_range=(0.25, 4.0), convention="input is grey values in [0, 1], as tuili.data.load_glyphs returns them",
    builder=lambda width, num_classes, **_: GlyphsCNN(num_classes, width), **_GLYPHS))
register(ModelSpec(
    name="resnet8_glyphs", paper="He et al. 2016, Deep Residual Learning (arXiv:1512.03385), Sec. 4.2 CIFAR ResNet, n=1",
    min_resolution=4, width_range=(0.25, 4.0),
    convention="CIFAR ResNet-8 (16/32/64 channels); projection shortcuts (option B) where the paper's CIFAR nets pad "
               "with zeros (option A); 1 input channel, values in [0, 1]",
    builder=lambda width, num_classes, **_: CifarResNet(1, num_classes, width=width), **_GLYPHS))
