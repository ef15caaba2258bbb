"""The torch modules of the search space: a network for an :class:`~tuili.nas.space.Arch`, and one
block alone (for the latency table). Built from the zoo's layers."""
from __future__ import annotations

from torch import nn

from tuili.nas.space import Arch, Block, SearchSpace
from tuili.zoo.layers import ClassifierHead, ConvBNAct, SqueezeExcite, init_cnn, make_divisible


class MBBlock(nn.Module):
    """Inverted residual: 1x1 expand (ReLU6) -> kxk depthwise (ReLU6) -> optional squeeze-excite
    (hard-sigmoid gate, as MobileNetV3) -> 1x1 linear projection; residual when the shape is kept.

    Parts are named, not numbered, so the same weight has the same name whether SE is on or off."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, hidden: int, se: bool):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, hidden, 1, act="relu6")
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act="relu6")
        self.se = SqueezeExcite(hidden, make_divisible(hidden // 4), act="relu", gate="hsigmoid") if se else None
        self.project = ConvBNAct(hidden, cout, 1, act=None)

    def forward(self, x):
        y = self.dw(self.expand(x))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.use_res else y


class Head(nn.Module):
    """1x1 conv (ReLU6) -> global average pool -> linear."""

    def __init__(self, cin: int, hidden: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNAct(cin, hidden, 1, act="relu6")
        self.classifier = ClassifierHead(hidden, num_classes)

    def forward(self, x):
        return self.classifier(self.conv(x))


def block_module(b: Block) -> nn.Module:
    if b.kind == "stem":
        return ConvBNAct(b.cin, b.cout, b.kernel, b.stride, act="relu6")
    if b.kind == "mbconv":
        return MBBlock(b.cin, b.cout, b.kernel, b.stride, b.hidden, b.se)
    if b.kind == "head":
        return Head(b.cin, b.hidden, b.cout)
    raise ValueError(f"unknown block kind {b.kind!r}")


class NasNet(nn.Module):
    """The network of one architecture: ``stem``, ``stages[i][j]`` (MBBlock), ``head``."""

    def __init__(self, space: SearchSpace, arch: Arch):
        super().__init__()
        self.arch = arch
        blocks = space.blocks(arch)
        self.stem = block_module(blocks[0])
        it = iter(blocks[1:-1])
        self.stages = nn.ModuleList(nn.Sequential(*(block_module(next(it)) for _ in range(st.depth))) for st in arch.stages)
        self.head = block_module(blocks[-1])
        init_cnn(self)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
