"""A Once-for-All weight-sharing supernet (Cai et al., ICLR 2020), at glyphs scale.

The supernet holds the weights of the space's largest network. A sub-network uses slices of them:
the first channels of every layer (OFA keeps channels in importance order; here training with
progressive shrinking puts the important ones first), and the centre of every depthwise kernel
(OFA's kernel transformation matrices are left out); a stage of depth d uses its first d blocks.
Running a sub-network calls its own module (built on the meta device, so it holds no memory) with
the sliced tensors (:func:`torch.func.functional_call`), so gradients reach the shared weights.

Training is progressive shrinking: first the largest network, then elastic kernel, depth,
expansion, and last width and squeeze-excite, each phase sampling one sub-network per step from
the choices opened so far. A sub-network is then evaluated with its inherited weights after its
BatchNorm statistics are recalibrated on training images (their running statistics are shared by
every sub-network during training and fit none of them).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from tuili.nas.space import Arch, SearchSpace, Stage
from tuili.zoo.training import fit  # the one training loop (tuili.nas.supernet.fit for the pipeline)

log = logging.getLogger(__name__)


def slice_like(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The part of ``t`` a smaller tensor of ``shape`` inherits: leading channels on the first two
    axes, the centre on the spatial (kernel) axes."""
    if t.shape == shape:
        return t
    index = []
    for axis, (have, want) in enumerate(zip(t.shape, shape)):
        start = (have - want) // 2 if axis >= 2 else 0
        index.append(slice(start, start + want))
    return t[tuple(index)]


class Supernet(nn.Module):
    """The largest network's weights, and sub-networks of them. ``forward`` runs ``self.active``."""

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__()
        self.space = space
        self.net = space.build(space.largest(), seed)
        self.active = space.largest()
        self._skeletons: dict[Arch, nn.Module] = {}

    def _skeleton(self, arch: Arch) -> nn.Module:
        if arch not in self._skeletons:
            if len(self._skeletons) > 256:
                self._skeletons.clear()
            with torch.device("meta"):
                from tuili.nas.net import NasNet

                self._skeletons[arch] = NasNet(self.space, arch)
        return self._skeletons[arch]

    def shared_state(self, arch: Arch, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s parameters and buffers as slices (views) of the supernet's."""
        mine = dict(self.net.named_parameters()) | dict(self.net.named_buffers())
        theirs = dict(module.named_parameters()) | dict(module.named_buffers())
        return {name: slice_like(mine[name], t.shape) for name, t in theirs.items()}

    def forward(self, x):
        sk = self._skeleton(self.active).train(self.training)
        return torch.func.functional_call(sk, self.shared_state(self.active, sk), (x,))

    def extract(self, arch: Arch) -> nn.Module:
        """A standalone network of ``arch`` holding copies of its inherited weights (eval mode)."""
        sub = self.space.build(arch)
        with torch.no_grad():
            sub.load_state_dict({k: v.detach().clone() for k, v in self.shared_state(arch, sub).items()})
        return sub.eval()


# --------------------------------------------------------------------------- progressive shrinking


@dataclasses.dataclass(frozen=True)
class Phase:
    """A stage of progressive shrinking: ``epochs`` epochs sampling the choices in ``elastic``
    (the others stay at their largest value)."""

    name: str
    elastic: tuple[str, ...]
    epochs: float
    lr: float


def shrinking_schedule(epochs: float = 2, first: float | None = None, lr: float = 3e-3) -> list[Phase]:
    """OFA's order: largest network, + kernel, + depth, + expansion, + width and squeeze-excite;
    later phases start from a lower learning rate (they fine-tune what the first one learnt)."""
    opened: tuple[str, ...] = ()
    phases = [Phase("largest", opened, first if first is not None else epochs, lr)]
    for step in (("kernel",), ("depth",), ("expansion",), ("width", "se")):
        opened = opened + step
        phases.append(Phase("+" + "+".join(step), opened, epochs, lr / 3))
    return phases


def sample_elastic(space: SearchSpace, elastic: tuple[str, ...], rng: np.random.Generator) -> Arch:
    """A random architecture where only the ``elastic`` choices vary."""
    big = space.largest()
    a = space.sample(rng)

    def pick(name, s_rand, s_big):
        return getattr(s_rand if name in elastic else s_big, name)

    stages = tuple(Stage(pick("kernel", r, b), pick("expansion", r, b), pick("depth", r, b), pick("se", r, b))
                   for r, b in zip(a.stages, big.stages))
    return Arch(a.width if "width" in elastic else big.width, stages)


def train_supernet(supernet: Supernet, x: np.ndarray, y: np.ndarray, phases: list[Phase], *, seed: int = 0,
                   batch_size: int = 64, progress: bool = False, threads: int | None = 1) -> list[dict]:
    """Progressive shrinking: the phases in order, each sampling a sub-network per step."""
    history = []
    for p_i, phase in enumerate(phases):
        rng = np.random.default_rng([seed, p_i])

        def sample(_step, phase=phase, rng=rng):
            supernet.active = sample_elastic(supernet.space, phase.elastic, rng)

        rows = fit(supernet, x, y, epochs=phase.epochs, lr=phase.lr, batch_size=batch_size, seed=seed + p_i,
                   before_step=sample, progress=progress, desc=f"supernet {phase.name}", threads=threads)
        history += [{"phase": phase.name, **r} for r in rows]
    supernet.active = supernet.space.largest()
    return history


def recalibrated(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running statistics from ``x`` (cumulative average over its batches)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(x[i:i + batch_size]))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def inherited_accuracy(supernet: Supernet, arch: Arch, x_calib: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``arch`` with the supernet's weights, BatchNorm recalibrated on ``x_calib``."""
    from tuili.zoo.training import evaluate

    return evaluate(recalibrated(supernet.extract(arch), x_calib), x, y)
