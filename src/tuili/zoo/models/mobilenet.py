"""MobileNet V1, V2 and V3 (Large/Small).

- V1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", 2017 (Table 1 body; Table 8: 1.0 MobileNet-224 = 4.2M params, 569M mult-adds).
- V2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018 (Table 2;
  1.0/224 = 3.4M params, 300M MACs).
- V3: Howard et al., "Searching for MobileNetV3", ICCV 2019 (Tables 1-2; Large 1.0 = 5.4M / 219M,
  Small 1.0 = 2.5M / 56M).
"""
from __future__ import annotations

from torch import nn

from tuili.zoo.layers import ClassifierHead, ConvBNAct, SqueezeExcite, activation, init_cnn, make_divisible
from tuili.zoo.registry import ModelSpec, register

IMAGE_INPUTS = {"input": ("batch", 3, "height", "width")}


# --------------------------------------------------------------------------- V1

V1_BODY = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c = make_divisible(32 * width, 8)
        layers: list[nn.Module] = [ConvBNAct(3, c, 3, 2)]
        for cout, s in V1_BODY:
            cout = make_divisible(cout * width, 8)
            layers += [ConvBNAct(c, c, 3, s, groups=c), ConvBNAct(c, cout, 1)]
            c = cout
        self.features = nn.Sequential(*layers)
        self.classifier = ClassifierHead(c, num_classes)
        init_cnn(self)

    def forward(self, x):
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- V2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: float):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act="relu6"))
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act="relu6"), ConvBNAct(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


V2_SETTINGS = [  # t (expansion), c (channels), n (repeats), s (first stride)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c = make_divisible(32 * width, 8)
        last = make_divisible(1280 * max(1.0, width), 8)
        layers: list[nn.Module] = [ConvBNAct(3, c, 3, 2, act="relu6")]
        for t, ch, n, s in V2_SETTINGS:
            cout = make_divisible(ch * width, 8)
            for i in range(n):
                layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        layers.append(ConvBNAct(c, last, 1, act="relu6"))
        self.features = nn.Sequential(*layers)
        self.classifier = ClassifierHead(last, num_classes, dropout=0.2)
        init_cnn(self)

    def forward(self, x):
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- V3


class V3Block(nn.Module):
    """MobileNetV3 bneck: optional 1x1 expand -> depthwise kxk -> optional SE (hard-sigmoid gate) -> 1x1 project."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, act=act))
        layers.append(ConvBNAct(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcite(exp, make_divisible(exp // 4, 8), act="relu", gate="hsigmoid"))
        layers.append(ConvBNAct(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


V3_LARGE = [  # k, exp, out, SE, act, stride  (Table 1)
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2),
    (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1),
    (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2),
    (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
]
V3_SMALL = [  # Table 2
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
]


class MobileNetV3(nn.Module):
    def __init__(self, config, last_conv: int, last_linear: int, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c = make_divisible(16 * width, 8)
        layers: list[nn.Module] = [ConvBNAct(3, c, 3, 2, act="hswish")]
        for k, exp, out, se, act, s in config:
            exp, out = make_divisible(exp * width, 8), make_divisible(out * width, 8)
            layers.append(V3Block(c, k, exp, out, se, act, s))
            c = out
        last_conv = make_divisible(last_conv * width, 8)
        layers.append(ConvBNAct(c, last_conv, 1, act="hswish"))
        self.features = nn.Sequential(*layers)
        last_linear = make_divisible(last_linear * max(1.0, width), 8)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(last_conv, last_linear),
            activation("hswish"),
            nn.Dropout(0.2),
            nn.Linear(last_linear, num_classes),
        )
        init_cnn(self)

    def forward(self, x):
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- registry

_CNN = dict(task="image-classification", inputs=IMAGE_INPUTS, outputs=("logits",), default_resolution=224, min_resolution=32, num_classes=1000)

register(ModelSpec(
    name="mobilenet_v1", paper="Howard et al. 2017, MobileNets (arXiv:1704.04861)",
    width_range=(0.25, 2.0), paper_params=4.2e6, paper_macs=569e6,
    convention="Table 8, 1.0 MobileNet-224; MACs of conv + FC layers",
    builder=lambda width, num_classes, **_: MobileNetV1(width, num_classes), **_CNN))
register(ModelSpec(
    name="mobilenet_v2", paper="Sandler et al. 2018, MobileNetV2 (arXiv:1801.04381)",
    width_range=(0.25, 2.0), paper_params=3.5e6, paper_macs=300e6,
    convention="Table 4 prints 3.4M params / 300M MACs; the Table 2 network with its 1000-way classifier has 3.50M "
               "(the figure of the authors' TF-slim release), which is what we test against",
    builder=lambda width, num_classes, **_: MobileNetV2(width, num_classes), **_CNN))
register(ModelSpec(
    name="mobilenet_v3_large", paper="Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244)",
    width_range=(0.25, 2.0), paper_params=5.4e6, paper_macs=219e6,
    convention="Table 3, Large 1.0 at 224",
    builder=lambda width, num_classes, **_: MobileNetV3(V3_LARGE, 960, 1280, width, num_classes), **_CNN))
register(ModelSpec(
    name="mobilenet_v3_small", paper="Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244)",
    width_range=(0.25, 2.0), paper_params=2.5e6, paper_macs=56e6,
    convention="Table 3, Small 1.0 at 224",
    builder=lambda width, num_classes, **_: MobileNetV3(V3_SMALL, 576, 1024, width, num_classes), **_CNN))
