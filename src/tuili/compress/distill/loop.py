"""Distillation's and binarization's training call: :func:`tuili.zoo.training.fit` with the zoo's
recipe (AdamW, one-cycle schedule, full reshuffled batches), so a baseline trained here compares
with a distilled or binarized twin trained here at the same seed and epochs. The loss is a
callable, so each technique supplies its own (cross-entropy, Hinton's soft targets, hints)."""
from __future__ import annotations

from collections.abc import Callable, Iterable

from tuili.errors import ConfigError
from tuili.zoo.training import TrainData, subset, trainable
from tuili.zoo.training import fit as _fit


def fit(model, data: TrainData, loss: Callable, *, epochs: int, extra: Iterable = (), seed: int = 0,
        lr: float = 3e-3, batch_size: int = 64, progress: bool | str = True, threads: int | None = None) -> list[dict]:
    """Train ``model`` in place: ``loss(logits, xb, yb)`` per batch, ``extra`` parameters (adapters)
    trained alongside. Returns per-epoch rows (loss, train_acc, val_acc or test_acc)."""
    params = trainable(model) + list(extra)
    if int(epochs) < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    watch = ("val_acc", data.x_val, data.y_val) if data.x_val is not None else ("test_acc", data.x_test, data.y_test)
    return _fit(model, data.x_train, data.y_train, epochs=int(epochs), lr=lr, weight_decay=1e-4, schedule="onecycle",
                batch_size=batch_size, seed=seed, loss=loss, params=params, watch=watch, progress=bool(progress),
                desc=progress if isinstance(progress, str) else "train", threads=threads or 1)


__all__ = ["fit", "subset", "trainable"]
