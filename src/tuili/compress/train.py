"""The fine-tune / evaluate loop the compression techniques share (pruning, Deep Compression).

It trains any torch module on a :class:`tuili.zoo.training.TrainData` (train split only; the test
split is for the final report, never for training or selection) with a tqdm progress bar, and
takes two hooks: ``regularizer(model) -> loss term`` (e.g. network slimming's L1 on BN gammas) and
``after_step(model)`` (e.g. re-applying pruning masks or shared weights after each update)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from tuili.errors import ConfigError
from tuili.zoo.training import TrainData, evaluate

log = logging.getLogger(__name__)


def check_trainable(model, what: str) -> list:
    """The model's trainable parameters; a model without any is refused."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{what}: the model has no trainable weights (no parameter with requires_grad); "
                          "give a model with Conv/Linear layers whose weights require gradients")
    return params


def subset(data: TrainData, train: int | None = None, test: int | None = None) -> TrainData:
    """The first ``train`` / ``test`` samples of each split (for quick runs and tests)."""
    def cut(x, n):
        return x if x is None or n is None else x[:n]
    return dataclasses.replace(data, x_train=cut(data.x_train, train), y_train=cut(data.y_train, train),
                               x_test=cut(data.x_test, test), y_test=cut(data.y_test, test),
                               x_val=cut(data.x_val, test), y_val=cut(data.y_val, test))


def fine_tune(model, data: TrainData, epochs: float = 1.0, *, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
              regularizer: Callable | None = None, after_step: Callable | None = None, params=None,
              progress: bool = True, desc: str = "fine-tune", threads: int | None = 1) -> list[dict]:
    """Train ``model`` in place on ``data``'s train split for ``epochs`` (fractions allowed) with AdamW
    and a cosine learning rate; returns one row per epoch (loss, train accuracy). ``params`` limits
    the optimizer to those tensors (default: all trainable parameters)."""
    import torch
    from torch import nn

    if epochs <= 0:
        return []
    params = list(params) if params is not None else check_trainable(model, desc)
    n = len(data.x_train)
    batch_size = max(2, min(int(batch_size), n))
    per_epoch = max(1, n // batch_size)
    steps = max(1, int(round(epochs * per_epoch)))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    xtr, ytr = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", leave=False)
    history: list[dict] = []
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)  # 1 by default: see tuili.zoo.training.train
    try:
        model.train()
        step, tot, correct, seen, perm = 0, 0.0, 0, 0, None
        while step < steps:
            i = (step % per_epoch) * batch_size
            if i == 0:
                perm = torch.randperm(n, generator=gen)
            idx = perm[i:i + batch_size]
            logits = model(xtr[idx])
            loss = loss_fn(logits, ytr[idx])
            if regularizer is not None:
                loss = loss + regularizer(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step(model)
            step += 1
            tot += loss.item() * len(idx)
            correct += int((logits.argmax(1) == ytr[idx]).sum())
            seen += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{tot / seen:.3f}")
            if step % per_epoch == 0 or step == steps:
                history.append({"epoch": len(history) + 1, "loss": tot / seen, "train_acc": correct / seen})
                log.info("%s epoch %d: loss %.4f, train %.2f%%", desc, len(history), tot / seen, 100 * correct / seen)
                tot, correct, seen = 0.0, 0, 0
    finally:
        torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()
        model.eval()
    return history


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


__all__ = ["accuracy", "check_trainable", "export_onnx", "fine_tune", "onnx_accuracy", "subset"]
