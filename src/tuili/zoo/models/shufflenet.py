"""ShuffleNet V2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018). Table 5: 0.5x = 1.4M params / 41M FLOPs, 1.0x = 2.3M / 146M FLOPs; the
paper's "FLOPs" are multiply-adds (it says so in Sec. 1), so they are MACs here."""
from __future__ import annotations

import torch
from torch import nn

from tuili.zoo.layers import ConvBNAct, init_cnn
from tuili.zoo.registry import ModelSpec, register

STAGE_CHANNELS = {  # Table 5: output channels of Conv1, Stage2-4, Conv5
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Fig. 3(c) (stride 1: channel split, one branch) and 3(d) (stride 2: both branches see the input)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(ConvBNAct(cin, cin, 3, stride, groups=cin, act=None), ConvBNAct(cin, half, 1))
            b2_in = cin
        else:
            assert cin == cout, "stride-1 ShuffleNetV2 unit keeps the channel count"
            self.branch1 = None
            b2_in = half
        self.branch2 = nn.Sequential(
            ConvBNAct(b2_in, half, 1),
            ConvBNAct(half, half, 3, stride, groups=half, act=None),
            ConvBNAct(half, half, 1),
        )

    def forward(self, x):
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        chans = STAGE_CHANNELS[width]
        self.conv1 = ConvBNAct(3, chans[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        c = chans[0]
        for reps, cout in zip(STAGE_REPEATS, chans[1:4]):
            units = [ShuffleUnit(c, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(reps - 1)]
            stages.append(nn.Sequential(*units))
            c = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = ConvBNAct(c, chans[4], 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[4], num_classes)
        init_cnn(self)

    def forward(self, x):
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


_CNN = dict(task="image-classification", inputs={"input": ("batch", 3, "height", "width")}, outputs=("logits",),
            default_resolution=224, min_resolution=32, num_classes=1000,
            paper="Ma et al. 2018, ShuffleNet V2 (arXiv:1807.11164)", width_choices=tuple(STAGE_CHANNELS),
            convention="Table 5 at 224; the paper's FLOPs are multiply-adds")

register(ModelSpec(name="shufflenet_v2_x0_5", paper_params=1.4e6, paper_macs=41e6,
                   default_width=0.5,
                   builder=lambda width, num_classes, **_: ShuffleNetV2(width, num_classes), **_CNN))
register(ModelSpec(name="shufflenet_v2_x1_0", paper_params=2.3e6, paper_macs=146e6,
                   builder=lambda width, num_classes, **_: ShuffleNetV2(width, num_classes), **_CNN))
