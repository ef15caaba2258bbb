"""The one training loop (tuili.zoo.training.fit) every stage trains with: steps, hooks, seeding, threads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tuili.errors import ConfigError
from tuili.zoo.training import digits_data, fit, subset, trainable


def _data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, n).astype(np.int64)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def test_fractional_epochs_hooks_and_rows():
    x, y = _data(80)
    before, after = [], []
    rows = fit(_model(), x, y, epochs=1.5, batch_size=16, before_step=before.append, after_step=lambda m: after.append(1),
               watch=("val_acc", x[:20], y[:20]), schedule="cosine")
    assert before == list(range(8)) and len(after) == 8  # 5 batches an epoch, half of the second epoch
    assert [r["epoch"] for r in rows] == [1, 2] and all(0 <= r["val_acc"] <= 1 for r in rows)
    assert all(np.isfinite(r["loss"]) and "train_acc" in r and r["seconds"] >= 0 for r in rows)


def test_samples_cap_the_batches_of_an_epoch():
    x, y = _data(80)
    seen = []
    fit(_model(), x, y, epochs=2, batch_size=16, samples=40, before_step=seen.append)
    assert len(seen) == 2 * (40 // 16)


def test_same_seed_same_weights_and_the_callers_state_is_untouched():
    x, y = _data()
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b = _model(), _model()
    torch.random.set_rng_state(state)
    fit(a, x, y, epochs=2, batch_size=16, seed=7, threads=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # dropout drew from a forked, seeded generator
    assert torch.get_num_threads() == threads and not a.training
    torch.manual_seed(999)  # a different caller state must not change the result
    fit(b, x, y, epochs=2, batch_size=16, seed=7, threads=1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = _model()
    fit(c, x, y, epochs=2, batch_size=16, seed=8, threads=1)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_loss_regularizer_and_parameter_subset():
    x, y = _data()
    m = _model()
    head0 = m[1].weight.detach().clone()
    calls = []

    def loss(logits, xb, yb):
        calls.append(len(xb))
        return nn.functional.cross_entropy(logits, yb)

    rows = fit(m, x, y, epochs=1, batch_size=20, loss=loss, params=list(m[4].parameters()),
               regularizer=lambda mod: 10.0 * mod[4].weight.abs().sum())
    assert calls == [20] * 4 and torch.equal(m[1].weight, head0)  # only the last layer was given to AdamW
    assert rows[0]["loss"] > 1.0  # the regularizer's term is in the reported loss


def test_refusals():
    x, y = _data()
    with pytest.raises(ConfigError, match="schedule"):
        fit(_model(), x, y, epochs=1, schedule="linear")
    frozen = _model().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable weights"):
        trainable(frozen, "frozen")
    with pytest.raises(ConfigError, match="no trainable weights"):
        fit(frozen, x, y, epochs=1)


def test_subset_is_a_seeded_sample_in_data_order():
    ds = digits_data()
    a, b, c = subset(ds, train=100, test=30), subset(ds, train=100, test=30), subset(ds, train=100, test=30, seed=1)
    assert len(a.x_train) == 100 and len(a.x_test) == 30 and a.x_val is None
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    rows = {ds.x_train[i].tobytes(): i for i in range(len(ds.x_train))}
    idx = [rows[r.tobytes()] for r in a.x_train]
    assert idx == sorted(idx) and np.array_equal(ds.y_train[idx], a.y_train)
    assert subset(ds).x_train is ds.x_train
