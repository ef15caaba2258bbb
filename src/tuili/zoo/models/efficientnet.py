"""EfficientNet-B0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; Table 1,
5.3M params / 0.39B FLOPs = multiply-adds at 224) and EfficientNet-Lite0 (the authors' edge variant,
tensorflow/tpu efficientnet/lite README: no squeeze-excite, ReLU6 instead of swish, stem and head
not scaled; 4.7M params, 407M MACs at 224)."""
from __future__ import annotations

from torch import nn

from tuili.zoo.layers import ClassifierHead, ConvBNAct, SqueezeExcite, init_cnn, make_divisible
from tuili.zoo.registry import ModelSpec, register

B0_STAGES = [  # expand ratio, kernel, stride, output channels, repeats (Table 1)
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


class MBConv(nn.Module):
    """Mobile inverted bottleneck with optional squeeze-excite (SE width = 1/4 of the block input)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, se: bool, act: str):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=act))
        layers.append(ConvBNAct(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(1, cin // 4), act="silu", gate="sigmoid"))
        layers.append(ConvBNAct(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class EfficientNet(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000, lite: bool = False, dropout: float = 0.2):
        super().__init__()
        act = "relu6" if lite else "silu"
        stem = 32 if lite else make_divisible(32 * width, 8)
        layers: list[nn.Module] = [ConvBNAct(3, stem, 3, 2, act=act)]
        c = stem
        for e, k, s, out, n in B0_STAGES:
            out = make_divisible(out * width, 8)
            for j in range(n):
                layers.append(MBConv(c, out, e, k, s if j == 0 else 1, se=not lite, act=act))
                c = out
        head = 1280 if lite else make_divisible(1280 * width, 8)
        layers.append(ConvBNAct(c, head, 1, act=act))
        self.features = nn.Sequential(*layers)
        self.classifier = ClassifierHead(head, num_classes, dropout)
        init_cnn(self)

    def forward(self, x):
        return self.classifier(self.features(x))


_CNN = dict(task="image-classification", inputs={"input": ("batch", 3, "height", "width")}, outputs=("logits",),
            default_resolution=224, min_resolution=32, num_classes=1000, width_range=(0.25, 2.0))

register(ModelSpec(name="efficientnet_b0", paper="Tan & Le 2019, EfficientNet (arXiv:1905.11946)",
                   paper_params=5.3e6, paper_macs=390e6, convention="Table 2, B0 at 224; the paper's FLOPs are multiply-adds",
                   builder=lambda width, num_classes, **_: EfficientNet(width, num_classes), **_CNN))
register(ModelSpec(name="efficientnet_lite0", paper="Tan & Le, EfficientNet-Lite (github.com/tensorflow/tpu, models/official/efficientnet/lite)",
                   paper_params=4.7e6, paper_macs=407e6, convention="lite README table, Lite0 at 224",
                   builder=lambda width, num_classes, **_: EfficientNet(width, num_classes, lite=True), **_CNN))
