"""What the compression techniques share to train and measure (pruning, Deep Compression).

:func:`fine_tune` is :func:`tuili.zoo.training.fit` with the fine-tuning recipe (AdamW without weight
decay, cosine learning rate, fractional epochs) on a :class:`tuili.zoo.training.TrainData`'s train
split (the test split is for the final report, never for training or selection); it takes two
hooks: ``regularizer(model) -> loss term`` (e.g. network slimming's L1 on BN gammas) and
``after_step(model)`` (e.g. re-applying pruning masks or shared weights after each update), and
``teacher``: the dense model before compression, whose soft targets (Hinton's distillation loss)
guide the compressed copy back to it, which recovers more than the labels alone on a small train
split. :func:`recalibrate_batchnorm` re-estimates BatchNorm statistics after a structural change
(removed channels or weights shift every activation's mean and variance). The accuracy helpers
measure a torch module or an ONNX model on one split."""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from tuili.errors import ConfigError
from tuili.zoo.training import TrainData, evaluate, fit, subset, trainable

log = logging.getLogger(__name__)


# One implementation each, in tuili.zoo.training; these names are the ones pruning and its tests use.
check_trainable = trainable


def fine_tune(model, data: TrainData, epochs: float = 1.0, *, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
              regularizer: Callable | None = None, after_step: Callable | None = None, params=None,
              progress: bool = True, desc: str = "fine-tune", threads: int | None = 1, before_step: Callable | None = None,
              teacher=None, alpha: float = 0.9, temperature: float = 4.0) -> list[dict]:
    """Train ``model`` in place on ``data``'s train split for ``epochs`` (fractions allowed) with AdamW
    (no weight decay) and a cosine learning rate; returns one row per epoch (loss, train accuracy).
    ``params`` limits the optimizer to those tensors (default: all trainable parameters). With a
    ``teacher`` (a torch module, only run), the loss is Hinton's ``alpha`` / ``temperature`` distillation
    loss (:func:`tuili.compress.distill.kd.kd_loss`) instead of cross-entropy. The loop is
    :func:`tuili.zoo.training.fit`; ``before_step(step)`` runs before each of its steps."""
    if epochs <= 0:
        return []
    loss = None
    if teacher is not None:
        import torch

        from tuili.compress.distill.kd import check_alpha, check_temperature, kd_loss

        alpha, temperature = check_alpha(alpha), check_temperature(temperature)
        teacher.eval()

        def loss(logits, xb, yb):
            with torch.no_grad():
                soft = teacher(xb)
            return kd_loss(logits, soft, yb, alpha, temperature)
    return fit(model, data.x_train, data.y_train, epochs=epochs, lr=lr, weight_decay=0.0, schedule="cosine",
               batch_size=batch_size, seed=seed, params=params, regularizer=regularizer, before_step=before_step,
               after_step=after_step, loss=loss, progress=progress, desc=desc, threads=threads)


def steps_per_epoch(data: TrainData, batch_size: int = 64) -> int:
    """Optimizer steps :func:`fine_tune` takes per epoch (full batches of the train split)."""
    return max(1, len(data.x_train) // max(2, min(int(batch_size), len(data.x_train))))


def recalibrate_batchnorm(model, data: TrainData, samples: int = 4096, batch_size: int = 256, seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``samples`` train images (forward
    passes in train mode, no gradient, cumulative average); other state is untouched. Pruning changes
    what each BatchNorm sees, and stale statistics alone cost a pruned CNN tens of points before any
    fine-tuning. Returns the number of BatchNorm layers recalibrated (0: nothing to do)."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    idx = np.random.default_rng(seed).permutation(len(data.x_train))[:samples]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
            m.train()
        with torch.no_grad():
            for i in range(0, len(idx), batch_size):
                model(torch.from_numpy(np.ascontiguousarray(data.x_train[np.sort(idx[i:i + batch_size])])))
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return len(bns)


def accuracy(model, data: TrainData, split: str = "test") -> float:
    """Top-1 accuracy of a torch module on one split of ``data`` ("train", "val" or "test")."""
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if x is None:
        raise ConfigError(f"the {data.name} data set has no {split!r} split")
    return evaluate(model, x, y)


def onnx_accuracy(path, data: TrainData, split: str = "test", engine: str = "onnxruntime", batch: int = 256) -> float:
    """Top-1 accuracy of an ONNX classifier (first input, first output) in onnxruntime or tuili."""
    from tuili.runtime.session import InferenceSession

    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    sess = InferenceSession(str(path), engine=engine)
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def export_onnx(model, path, example, *, keep_batchnorm: bool = False):
    """Export a torch classifier to ONNX (dynamic batch): through :func:`tuili.zoo.export` when the
    model came from the zoo (its input/output names and metadata), else as ``input`` -> ``logits``."""
    from pathlib import Path

    import torch

    spec = getattr(model, "zoo_spec", None)
    model.eval()
    if spec is not None:
        from tuili.zoo import export

        return export(spec.name, path, model=model, resolution=example.shape[-1], keep_batchnorm=keep_batchnorm)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL)
    return path


__all__ = ["accuracy", "check_trainable", "export_onnx", "fine_tune", "onnx_accuracy", "recalibrate_batchnorm",
           "steps_per_epoch", "subset", "trainable"]
