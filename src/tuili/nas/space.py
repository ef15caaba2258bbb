"""The search space: MobileNetV2/V3-style networks for glyphs-sized images.

A network is a stem (3x3 conv, stride 2), five stages of inverted-residual blocks and a head (1x1
conv, global pool, linear). Per stage the search picks the depthwise kernel {3, 5, 7}, the
expansion {3, 4, 6} (hidden = input channels x expansion, as in MobileNetV2), the depth {2, 3, 4}
and squeeze-excite on or off; one width multiplier {0.5, 0.75, 1.0} scales every channel count
(rounded by the MobileNet rule, :func:`tuili.zoo.layers.make_divisible`).

Module names do not depend on the choices (``stages.2.1.dw.0.weight`` is the depthwise weight of
stage 2, block 1 in every architecture), so a sub-network's weights are slices of the largest
network's (see :mod:`tuili.nas.supernet`).
"""
from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import numpy as np

from tuili.errors import ConfigError
from tuili.zoo.layers import make_divisible

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """What the space fixes per stage: output channels at width 1.0 and the first block's stride."""

    channels: int
    stride: int


# For 32x32 inputs: the stem halves to 16x16, stages run at 8, 8, 4, 2 and 2 pixels (a first stage
# at 16x16 made the largest network 24 M MACs and its training steps 2x slower than this one's).
GLYPHS_STAGES = (StageSpec(16, 2), StageSpec(24, 1), StageSpec(40, 2), StageSpec(80, 2), StageSpec(112, 1))


@dataclasses.dataclass(frozen=True)
class Stage:
    """The choices of one stage."""

    kernel: int
    expansion: int
    depth: int
    se: bool


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture of the space: a width multiplier and the choices of every stage."""

    width: float
    stages: tuple[Stage, ...]

    def key(self) -> str:
        """A short, stable, readable name, e.g. ``w0.75-k3e4d2-k5e6d3s-...`` (``s``: squeeze-excite)."""
        return f"w{self.width:g}-" + "-".join(f"k{s.kernel}e{s.expansion}d{s.depth}{'s' if s.se else ''}"
                                               for s in self.stages)

    def to_dict(self) -> dict:
        return {"width": self.width, "stages": [dataclasses.asdict(s) for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        try:
            return cls(float(d["width"]), tuple(Stage(int(s["kernel"]), int(s["expansion"]), int(s["depth"]), bool(s["se"]))
                                               for s in d["stages"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not an architecture description ({e!r}): {d!r}; expected "
                              "{'width': w, 'stages': [{'kernel', 'expansion', 'depth', 'se'}, ...]}") from None


@dataclasses.dataclass(frozen=True)
class Block:
    """One layer group at its input shape (batch excluded): the unit the latency table measures.

    ``kind`` is "stem", "mbconv" or "head"; for the head, ``cout`` is the number of classes and
    ``hidden`` the 1x1 conv's channels."""

    kind: str
    cin: int
    cout: int
    side: int  # input height = width
    kernel: int = 1
    stride: int = 1
    hidden: int = 0
    se: bool = False

    def key(self) -> str:
        return (f"{self.kind}:c{self.cin}-{self.cout}:h{self.hidden}:r{self.side}:k{self.kernel}:s{self.stride}"
                f"{':se' if self.se else ''}")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The MobileNet-family space for ``in_channels`` x ``resolution``² images and ``num_classes`` classes."""

    resolution: int = 32
    in_channels: int = 1
    num_classes: int = 62
    stem: int = 16
    head: int = 384
    stages: tuple[StageSpec, ...] = GLYPHS_STAGES
    kernels: tuple[int, ...] = (3, 5, 7)
    expansions: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    widths: tuple[float, ...] = (0.5, 0.75, 1.0)

    def signature(self) -> dict:
        """Everything that defines the space, JSON-able (part of cache and state-file keys)."""
        d = dataclasses.asdict(self)
        d["stages"] = [[s.channels, s.stride] for s in self.stages]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    # ----- choosing architectures
    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random architecture."""
        stages = tuple(Stage(int(rng.choice(self.kernels)), int(rng.choice(self.expansions)), int(rng.choice(self.depths)),
                             bool(rng.integers(2))) for _ in self.stages)
        return Arch(float(rng.choice(self.widths)), stages)

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float = 0.1) -> Arch:
        """Re-draw each choice with probability ``prob``; at least one choice changes (to a new value)."""
        genes = self.encode(arch)
        sizes = self._gene_sizes()
        flips = rng.random(len(genes)) < prob
        if not flips.any():
            flips[rng.integers(len(genes))] = True
        for i in np.flatnonzero(flips):
            genes[i] = (genes[i] + 1 + int(rng.integers(sizes[i] - 1))) % sizes[i]  # any value but the current
        return self.decode(genes)

    def largest(self) -> Arch:
        return Arch(max(self.widths), tuple(Stage(max(self.kernels), max(self.expansions), max(self.depths), True)
                                            for _ in self.stages))

    def smallest(self) -> Arch:
        return Arch(min(self.widths), tuple(Stage(min(self.kernels), min(self.expansions), min(self.depths), False)
                                            for _ in self.stages))

    def _gene_sizes(self) -> list[int]:
        return [len(self.widths)] + [len(self.kernels), len(self.expansions), len(self.depths), 2] * len(self.stages)

    def encode(self, arch: Arch) -> list[int]:
        """The architecture as choice indices: [width, (kernel, expansion, depth, se) per stage]."""
        self.check(arch)
        genes = [self.widths.index(arch.width)]
        for s in arch.stages:
            genes += [self.kernels.index(s.kernel), self.expansions.index(s.expansion), self.depths.index(s.depth), int(s.se)]
        return genes

    def decode(self, genes: list[int]) -> Arch:
        g = list(genes)
        if len(g) != len(self._gene_sizes()):
            raise ConfigError(f"an encoding of this space has {len(self._gene_sizes())} genes, got {len(g)}")
        stages = tuple(Stage(self.kernels[g[i]], self.expansions[g[i + 1]], self.depths[g[i + 2]], bool(g[i + 3]))
                       for i in range(1, len(g), 4))
        return Arch(self.widths[g[0]], stages)

    def check(self, arch: Arch) -> None:
        """ConfigError naming the first choice that is not in the space."""
        if arch.width not in self.widths:
            raise ConfigError(f"width {arch.width} is not in the space's widths {self.widths}")
        if len(arch.stages) != len(self.stages):
            raise ConfigError(f"the space has {len(self.stages)} stages, the architecture {len(arch.stages)}")
        for i, s in enumerate(arch.stages):
            for name, allowed in (("kernel", self.kernels), ("expansion", self.expansions), ("depth", self.depths)):
                if getattr(s, name) not in allowed:
                    raise ConfigError(f"stage {i}: {name} {getattr(s, name)} is not one of {allowed}")

    # ----- shapes
    def channels(self, arch: Arch) -> tuple[int, list[int], int]:
        """(stem channels, per-stage output channels, head channels) at ``arch.width``."""
        w = arch.width
        return (make_divisible(self.stem * w), [make_divisible(s.channels * w) for s in self.stages],
                make_divisible(self.head * w))

    def blocks(self, arch: Arch) -> list[Block]:
        """Every block of ``arch`` in order, at its input shape."""
        stem, outs, head = self.channels(arch)
        side = self.resolution
        out = [Block("stem", self.in_channels, stem, side, kernel=3, stride=2)]
        side, cin = _down(side, 2), stem
        for spec, st, cout in zip(self.stages, arch.stages, outs):
            for j in range(st.depth):
                stride = spec.stride if j == 0 else 1
                out.append(Block("mbconv", cin, cout, side, st.kernel, stride, make_divisible(cin * st.expansion), st.se))
                side, cin = _down(side, stride), cout
        out.append(Block("head", cin, self.num_classes, side, hidden=head))
        return out

    def all_blocks(self) -> list[Block]:
        """Every block any architecture of the space contains (the latency table's rows), sorted by key."""
        seen: dict[str, Block] = {}
        for w in self.widths:
            for st in self._stage_variants():
                for b in self.blocks(Arch(w, st)):
                    seen.setdefault(b.key(), b)
        return [seen[k] for k in sorted(seen)]

    def _stage_variants(self):
        """Architectures that together contain every (stage, kernel, expansion, se) block, first and repeated."""
        for k in self.kernels:
            for e in self.expansions:
                for se in (False, True):
                    yield tuple(Stage(k, e, max(self.depths), se) for _ in self.stages)

    # ----- torch
    def build(self, arch: Arch, seed: int = 0):
        """A :class:`NasNet` for ``arch`` with random weights (deterministic in ``seed``), in eval mode."""
        import torch

        from tuili.nas.net import NasNet

        self.check(arch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = NasNet(self, arch)
        return net.eval()

    def build_block(self, block: Block, seed: int = 0):
        """One block alone (random weights, eval mode): what the latency table times."""
        import torch

        from tuili.nas.net import block_module

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return block_module(block).eval()


def _down(side: int, stride: int) -> int:
    return (side - 1) // stride + 1  # 'same' padding, odd kernels


INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export(module, path=None, *, input_shape: tuple[int, ...], batch: int = 1, opset: int = 17,
           output_name: str = OUTPUT_NAME, doc: str = "") -> Path | bytes:
    """Export a torch module (eval mode, BatchNorm folded into the convolutions) to ONNX with a fixed
    batch; to ``path`` (returned) or, without one, as serialized bytes."""
    import onnx
    import torch

    from tuili.zoo.core import _quiet_exporter  # the zoo's exporter settings (silences TorchScript's noise)

    if int(batch) < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    x = torch.randn(int(batch), *input_shape)
    buf = io.BytesIO()
    module.eval()
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[output_name], do_constant_folding=True)
    if path is None and not doc:
        return buf.getvalue()
    m = onnx.load_from_string(buf.getvalue())
    m.producer_name = "tuili.nas"
    m.doc_string = doc
    if path is None:
        return m.SerializeToString()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return path
