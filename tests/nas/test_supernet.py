"""The weight-sharing supernet: sub-networks are slices of it, extraction copies them, training moves them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tuili.nas.proxies import kendall_tau, naswot, synflow
from tuili.nas.supernet import (
    Supernet,
    inherited_accuracy,
    recalibrated,
    sample_elastic,
    shrinking_schedule,
    slice_like,
    train_supernet,
)


def test_slice_keeps_leading_channels_and_the_kernel_centre():
    t = torch.arange(4 * 3 * 5 * 5).reshape(4, 3, 5, 5)
    s = slice_like(t, torch.Size((2, 3, 3, 3)))
    assert torch.equal(s, t[:2, :, 1:4, 1:4])
    assert slice_like(t, t.shape) is t


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_subnetwork_in_the_supernet_equals_its_extracted_copy(tiny_space, seed):
    sn = Supernet(tiny_space, seed=0)
    arch = tiny_space.sample(np.random.default_rng(seed))
    sn.active = arch
    x = torch.rand(3, 1, 16, 16)
    recalibrated(sn.net, x.numpy())  # non-trivial BatchNorm statistics to inherit
    sn.eval()
    sub = sn.extract(arch)
    with torch.no_grad():
        torch.testing.assert_close(sn(x), sub(x))


def test_training_a_subnetwork_changes_only_its_slice(tiny_space):
    sn = Supernet(tiny_space, seed=0)
    small = tiny_space.smallest()
    sn.active = small
    before = {k: v.clone() for k, v in sn.net.state_dict().items()}
    sn.train()
    sn(torch.rand(4, 1, 16, 16)).sum().backward()
    w = sn.net.stages[0][0].expand[0].weight
    hidden_small = sn.extract(small).stages[0][0].expand[0].weight.shape[0]
    assert w.grad[:hidden_small].abs().sum() > 0 and w.grad[hidden_small:].abs().sum() == 0
    assert torch.equal(before["stages.1.1.dw.0.weight"], sn.net.state_dict()["stages.1.1.dw.0.weight"])


def test_progressive_shrinking_opens_choices_in_order(tiny_space):
    phases = shrinking_schedule(1)
    assert [p.name for p in phases] == ["largest", "+kernel", "+depth", "+expansion", "+width+se"]
    rng = np.random.default_rng(0)
    assert sample_elastic(tiny_space, (), rng) == tiny_space.largest()
    for _ in range(20):
        a = sample_elastic(tiny_space, ("kernel",), rng)
        assert a.width == 1.0 and all(s.expansion == 6 and s.depth == 2 and s.se for s in a.stages)


def test_supernet_training_lowers_the_loss_and_subnetworks_evaluate(tiny_space):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 256)
    x = (rng.random((256, 1, 16, 16)) * 0.3 + y[:, None, None, None] / 5).astype(np.float32)  # brightness = class
    sn = Supernet(tiny_space, seed=0)
    history = train_supernet(sn, x, y, shrinking_schedule(2, lr=1e-2), batch_size=32)
    assert [h["phase"] for h in history][::2] == ["largest", "+kernel", "+depth", "+expansion", "+width+se"]
    assert history[-1]["loss"] < history[0]["loss"]
    acc = inherited_accuracy(sn, tiny_space.sample(rng), x[:128], x, y)
    assert acc > 0.4  # chance is 0.2


def test_zero_cost_proxies_score_and_rank(tiny_space):
    rng = np.random.default_rng(0)
    x = rng.random((16, 1, 16, 16), dtype=np.float32)
    small, big = tiny_space.build(tiny_space.smallest()), tiny_space.build(tiny_space.largest())
    assert synflow(big, (1, 16, 16)) > synflow(small, (1, 16, 16))
    assert np.isfinite(naswot(small, x)) and np.isfinite(naswot(big, x))
    before = {k: v.clone() for k, v in big.state_dict().items()}
    naswot(big, x)
    assert all(torch.equal(v, big.state_dict()[k]) for k, v in before.items())
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
