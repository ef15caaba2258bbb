"""MobileViT (Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly
Vision Transformer", ICLR 2022). Table 4 / Appendix A (architecture) at 256x256:
XXS = 1.3M params, XS = 2.3M, S = 5.6M.

The block unfolds a feature map into 2x2 patches, runs a Transformer across patches for each of the
4 pixel positions, folds back, projects and fuses with the block input by a 3x3 conv. Every feature
map the transformers see must split into whole patches, so the input side must be a multiple of 64
(the original code resizes instead; we refuse, which keeps the exported graph static)."""
from __future__ import annotations

import math

import torch
from torch import nn

from tuili.zoo.layers import ClassifierHead, ConvBNAct, init_cnn
from tuili.zoo.models.mobilenet import InvertedResidual
from tuili.zoo.registry import ModelSpec, register


class MV2(InvertedResidual):
    """MobileNetV2 block with SiLU (MobileViT's choice)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: float):
        super().__init__(cin, cout, stride, expand)
        for m in self.conv:
            if isinstance(m, ConvBNAct) and isinstance(m[2], nn.ReLU6):
                m[2] = nn.SiLU()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # x: [B, N, D]
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class TransformerLayer(nn.Module):
    """Pre-norm Transformer encoder layer with a SiLU feed-forward network."""

    def __init__(self, dim: int, ffn: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.SiLU(), nn.Linear(ffn, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MobileViTBlock(nn.Module):
    def __init__(self, channels: int, dim: int, ffn: int, depth: int, heads: int = 4, patch: int = 2):
        super().__init__()
        self.patch = patch
        self.local = nn.Sequential(ConvBNAct(channels, channels, 3, act="silu"), nn.Conv2d(channels, dim, 1, bias=False))
        self.transformer = nn.Sequential(*[TransformerLayer(dim, ffn, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj = ConvBNAct(dim, channels, 1, act="silu")
        self.fusion = ConvBNAct(2 * channels, channels, 3, act="silu")

    def forward(self, x):
        y = self.local(x)
        b, d, h, w = y.shape
        p = self.patch
        nh, nw = h // p, w // p
        # unfold: [B, D, H, W] -> [B * p*p, nh*nw, D]  (one sequence per pixel position inside a patch)
        t = y.reshape(b, d, nh, p, nw, p).permute(0, 3, 5, 2, 4, 1).reshape(b * p * p, nh * nw, d)
        t = self.norm(self.transformer(t))
        # fold back
        y = t.reshape(b, p, p, nh, nw, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        return self.fusion(torch.cat((x, self.proj(y)), dim=1))


CONFIGS = {  # Appendix A: channels (stem, l1, l2, l3, l4, l5), transformer dims, ffn dims, MV2 expansion
    "xxs": dict(ch=(16, 16, 24, 48, 64, 80), dims=(64, 80, 96), ffn=(128, 160, 192), expand=2),
    "xs": dict(ch=(16, 32, 48, 64, 80, 96), dims=(96, 120, 144), ffn=(192, 240, 288), expand=4),
    "s": dict(ch=(16, 32, 64, 96, 128, 160), dims=(144, 192, 240), ffn=(288, 384, 480), expand=4),
}
DEPTHS = (2, 4, 3)


class MobileViT(nn.Module):
    def __init__(self, size: str, num_classes: int = 1000):
        super().__init__()
        cfg = CONFIGS[size]
        ch, e = cfg["ch"], cfg["expand"]
        layers: list[nn.Module] = [ConvBNAct(3, ch[0], 3, 2, act="silu"), MV2(ch[0], ch[1], 1, e)]
        layers += [MV2(ch[1], ch[2], 2, e), MV2(ch[2], ch[2], 1, e), MV2(ch[2], ch[2], 1, e)]
        for i in range(3):
            layers += [MV2(ch[2 + i], ch[3 + i], 2, e), MobileViTBlock(ch[3 + i], cfg["dims"][i], cfg["ffn"][i], DEPTHS[i])]
        last = 4 * ch[5]
        layers.append(ConvBNAct(ch[5], last, 1, act="silu"))
        self.features = nn.Sequential(*layers)
        self.classifier = ClassifierHead(last, num_classes, dropout=0.1)
        init_cnn(self)
        for m in self.modules():  # transformer linears: Xavier, as in the reference code
            if isinstance(m, nn.Linear) and m.out_features != num_classes:
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x):
        return self.classifier(self.features(x))


for _size, _params, _macs in (("xxs", 1.3e6, None), ("xs", 2.3e6, None), ("s", 5.6e6, None)):
    register(ModelSpec(
        name=f"mobilevit_{_size}", task="image-classification",
        paper="Mehta & Rastegari 2022, MobileViT (arXiv:2110.02178)",
        inputs={"input": ("batch", 3, "height", "width")}, outputs=("logits",), default_resolution=256,
        min_resolution=64, resolution_multiple=64, num_classes=1000, paper_params=_params, paper_macs=_macs,
        convention="Table 4 params at 256x256; the paper gives no MACs for v1 (we report the count)",
        builder=(lambda s: lambda width, num_classes, **_: MobileViT(s, num_classes))(_size)))
