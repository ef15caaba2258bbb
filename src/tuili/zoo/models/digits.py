"""``digits_cnn``: a small CNN for scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

It takes raw digit images as scikit-learn ships them (one channel, pixel values 0..16) and scales
them by 1/16 inside the graph, so a server can feed ``load_digits().images`` as they are. Global
average pooling makes it work at any side >= 4 (digits upsampled for bigger inputs)."""
from __future__ import annotations

import torch
from torch import nn

from tuili.zoo.layers import ConvBNAct, init_cnn
from tuili.zoo.registry import ModelSpec, register


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        c1, c2 = max(4, int(32 * width)), max(8, int(64 * width))
        self.features = nn.Sequential(
            ConvBNAct(1, c1, 3), ConvBNAct(c1, c1, 3), nn.MaxPool2d(2),
            ConvBNAct(c1, c2, 3), ConvBNAct(c2, c2, 3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(c2, num_classes)
        init_cnn(self)

    def forward(self, x):
        x = self.features(x * (1.0 / 16.0))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


register(ModelSpec(
    name="digits_cnn", task="image-classification", paper="tuili: a 4-conv CNN for scikit-learn digits (no paper)",
    inputs={"input": ("batch", 1, "height", "width")}, outputs=("logits",), default_resolution=8, min_resolution=4,
    in_channels=1, num_classes=10, dataset="digits", width_range=(0.25, 4.0), paper_params=None, paper_macs=None,
    convention="input is raw pixel values 0..16 (scaled by 1/16 in the graph)",
    builder=lambda width, num_classes, **_: DigitsCNN(num_classes, width)))
