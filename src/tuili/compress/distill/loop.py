"""The training loop distillation and binarization share: AdamW + one-cycle schedule over full,
reshuffled batches of a :class:`tuili.zoo.training.TrainData`, the same recipe as
:func:`tuili.zoo.training.train`, so a baseline trained here compares with a distilled or binarized
twin trained here at the same seed and epochs. The loss is a callable, so each technique supplies
its own (cross-entropy, Hinton's soft targets, hints)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from tuili.errors import ConfigError
from tuili.zoo.training import TrainData, evaluate

log = logging.getLogger(__name__)


def trainable(model, what: str = "model") -> list:
    """The parameters of ``model`` that require gradients; a model without any is refused."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{what} ({type(model).__name__}) has no trainable weights (no parameter requires grad); "
                          "pass a torch module with parameters, e.g. from tuili.zoo.create")
    return params


def fit(model, data: TrainData, loss: Callable, *, epochs: int, extra: Iterable = (), seed: int = 0,
        lr: float = 3e-3, batch_size: int = 64, progress: bool | str = True, threads: int | None = None) -> list[dict]:
    """Train ``model`` in place: ``loss(logits, xb, yb)`` per batch, ``extra`` parameters (adapters)
    trained alongside. Returns per-epoch rows (loss, train_acc, val_acc or test_acc)."""
    import torch

    params = trainable(model) + list(extra)
    if int(epochs) < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    batch_size = max(2, min(int(batch_size), len(data.x_train)))
    per_epoch = len(data.x_train) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.2)
    xtr, ytr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    key, xw, yw = ("val_acc", data.x_val, data.y_val) if data.x_val is not None else ("test_acc", data.x_test, data.y_test)
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * per_epoch, desc=progress if isinstance(progress, str) else "train", unit="step")
    history = []
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or 1)  # as zoo.training: 1 intra-op thread trains fastest on busy shared cores
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for ep in range(epochs):
                model.train()
                perm = torch.randperm(len(xtr), generator=gen)
                tot, correct, n = 0.0, 0, 0
                for i in range(0, per_epoch * batch_size, batch_size):
                    idx = perm[i:i + batch_size]
                    xb, yb = xtr[idx], ytr[idx]
                    logits = model(xb)
                    value = loss(logits, xb, yb)
                    opt.zero_grad()
                    value.backward()
                    opt.step()
                    sched.step()
                    tot += float(value.detach()) * len(idx)
                    correct += int((logits.argmax(1) == yb).sum())
                    n += len(idx)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=ep + 1, loss=f"{tot / n:.3f}")
                row = {"epoch": ep + 1, "loss": tot / max(n, 1), "train_acc": correct / max(n, 1), key: evaluate(model, xw, yw)}
                history.append(row)
                log.info("epoch %d/%d: loss %.4f, train %.2f%%, %s %.2f%%", ep + 1, epochs, row["loss"],
                         100 * row["train_acc"], key[:-4], 100 * row[key])
    finally:
        torch.set_num_threads(saved)
        if bar is not None:
            bar.close()
    model.eval()
    return history


def subset(data: TrainData, train: int | None = None, test: int | None = None, seed: int = 0) -> TrainData:
    """A smaller copy of ``data`` (first ``train``/``test`` samples of a seeded shuffle) for quick runs."""
    import dataclasses

    rng = np.random.default_rng(seed)

    def take(x, y, k):
        if x is None or k is None or k >= len(x):
            return x, y
        i = np.sort(rng.permutation(len(x))[:k])
        return x[i], y[i]

    xtr, ytr = take(data.x_train, data.y_train, train)
    xte, yte = take(data.x_test, data.y_test, test)
    xv, yv = take(data.x_val, data.y_val, test)
    return dataclasses.replace(data, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, x_val=xv, y_val=yv)
