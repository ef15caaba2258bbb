"""Zero-cost proxies: a score of an untrained network that should rank architectures like training does.

- synflow (Tanaka et al. 2020; as a NAS proxy: Abdelfattah et al., ICLR 2021): the sum over
  parameters of |theta * d R / d theta| where R is the summed output for an all-ones input, with
  every weight made positive, computed in float64 (BatchNorm at its initial identity statistics).
- NASWOT (Mellor et al., ICML 2021): the log-determinant of the Hamming-similarity kernel of the
  ReLU on/off patterns a mini-batch produces; networks that separate inputs early score high.

:func:`kendall_tau` measures how well a proxy's ranking matches accuracies after training.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """The synflow score of ``model`` (a copy is scored; the model is not changed)."""
    net = copy.deepcopy(model).double().eval()
    for m in net.modules():  # BN as identity: synflow measures the weights' flow, not data statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad()
    net(torch.ones(1, *input_shape, dtype=torch.float64)).sum().backward()
    score = sum(float((p.detach() * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None)
    return float(np.log(score)) if score > 0 else float("-inf")


def naswot(model: nn.Module, x: np.ndarray) -> float:
    """The NASWOT score of ``model`` on the mini-batch ``x`` (N, C, H, W): log|K| of the ReLU codes' kernel."""
    model = copy.deepcopy(model)  # train-mode BatchNorm would move the caller's running statistics
    codes: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        codes.append((out.detach().flatten(1) > 0).double())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    model.train()  # batch statistics: the codes of an untrained network depend on the batch, not on stale buffers
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    for h in handles:
        h.remove()
    c = torch.cat(codes, 1)
    k = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k)[1])


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between two score lists (1: same ranking, -1: reversed)."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)
