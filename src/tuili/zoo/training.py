"""Train a zoo CNN on real data, no downloads: scikit-learn's digits or tuili's glyphs.

The data sets come from :mod:`tuili.data` with fixed splits, so every run and every later stage
(quantization, pruning, distillation) measures on the same test set. A model whose spec names the
data set (``digits_cnn`` -> digits, ``glyphs_cnn`` / ``resnet8_glyphs`` -> glyphs) takes it as
:mod:`tuili.data` returns it (digits: raw 8x8 values 0..16; glyphs: 32x32 values in [0, 1]); any
other CNN gets the images resized (bilinear) to its minimum input size, scaled to [-1, 1] and
repeated over its input channels.

Where the data set has a validation split (glyphs), each epoch reports validation accuracy and the
test split is evaluated once, at the end; digits has none, so its epochs report test accuracy (the
last epoch's model is kept either way: no split is used for model selection).

:func:`fit` is the one training loop every stage above uses (zoo training, pruning and Deep
Compression fine-tuning, distillation and binarization, QAT, the NAS supernet): each stage picks its
recipe through its arguments (schedule, weight decay, loss, hooks), so all of them share the data
order, seeding and thread handling described there.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from tuili.errors import ConfigError
from tuili.zoo.registry import ModelSpec, get_spec

log = logging.getLogger(__name__)

DATASETS = {
    "digits": "scikit-learn's 8x8 handwritten digits (10 classes)",
    "glyphs": "0-9A-Za-z rendered from matplotlib's fonts, 32x32 (62 classes, test faces unseen in training)",
}
GLYPHS_SEED = 0  # one generated glyph set for every run, so test accuracies compare


@dataclasses.dataclass
class TrainResult:
    accuracy: float  # top-1 on the held-out test split, in [0, 1]
    checkpoint: Path
    onnx_path: Path
    model: str = ""
    resolution: int | None = None
    epochs: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # per epoch: loss, train_acc, val_acc (or test_acc)
    seconds: float = 0.0
    data: str = "digits"
    val_accuracy: float | None = None  # last epoch, where the data set has a validation split


@dataclasses.dataclass
class TrainData:
    """A data set prepared for one model: float32 NCHW images, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    resolution: int
    channels: int
    num_classes: int = 10
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    name: str = "digits"


def digits_data(name: str = "digits_cnn", resolution: int | None = None) -> TrainData:
    """scikit-learn digits (fixed 75/25 split) prepared as model ``name`` expects them."""
    from tuili.data import load_digits

    splits = {s: load_digits(s) for s in ("train", "test")}
    return _prepare(get_spec(name), "digits", splits, (0.0, 16.0), 8, resolution, 10)


def glyphs_data(name: str = "glyphs_cnn", resolution: int | None = None, **glyph_kw) -> TrainData:
    """The glyphs set (train / val / test, split by face) prepared as model ``name`` expects it.
    ``glyph_kw`` go to :func:`tuili.data.glyph_set` (default: ``seed=GLYPHS_SEED`` and its defaults)."""
    from tuili.data import glyph_set
    from tuili.data.glyphs import CLASSES, SIZE

    g = glyph_set(**{"seed": GLYPHS_SEED, **glyph_kw})
    splits = {s: g.split(s) for s in ("train", "val", "test")}
    return _prepare(get_spec(name), "glyphs", splits, (0.0, 1.0), SIZE, resolution, len(CLASSES))


_LOADERS = {"digits": digits_data, "glyphs": glyphs_data}


def _prepare(spec: ModelSpec, data: str, splits: dict, value_range: tuple[float, float], side: int,
             resolution: int | None, num_classes: int) -> TrainData:
    if spec.is_text:
        raise ConfigError(f"{spec.name} is a {spec.task} model; the {data} data set needs an image model")
    native = spec.dataset == data
    if native:
        r, ch = resolution or side, 1
    else:
        r, ch = resolution or spec.min_resolution or spec.default_resolution, spec.in_channels
    lo, hi = value_range

    def adapt(x: np.ndarray) -> np.ndarray:
        if not native:
            x = (x - lo) * (2.0 / (hi - lo)) - 1.0
        if r != side:
            x = _resize(x, r)
        if ch != x.shape[1]:
            x = np.repeat(x, ch, axis=1)
        return np.ascontiguousarray(x, np.float32)

    out = {s: (adapt(x), y) for s, (x, y) in splits.items()}
    val = out.get("val", (None, None))
    return TrainData(*out["train"], *out["test"], r, ch, num_classes, *val, name=data)


def _resize(x: np.ndarray, r: int) -> np.ndarray:
    import torch

    t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x, np.float32)), size=(r, r), mode="bilinear", align_corners=False)
    return t.numpy()


# Epochs that train each model well; others: 10 (digits at 32x32: ResNet-18 98% in 6 epochs, MobileNetV2 95% in 8).
DEFAULT_EPOCHS = {"digits_cnn": 8, "glyphs_cnn": 8, "resnet8_glyphs": 8}


def train(name: str, data: str | TrainData | None = None, epochs: int | None = None, out_dir="zoo_runs", seed: int = 0,
          progress: bool = True, batch_size: int = 64, lr: float | None = None, resolution: int | None = None,
          width: float | None = None, threads: int | None = None) -> TrainResult:
    """Train zoo model ``name`` on ``data`` ("digits", "glyphs", a prepared :class:`TrainData`, or None for
    the model's own data set, else digits); save ``NAME.pt`` and ``NAME.onnx`` under ``out_dir``; return
    the test accuracy and both paths. Each epoch is logged (INFO) with its validation accuracy."""
    import torch

    from tuili.zoo.core import create, export

    spec = get_spec(name)
    name = spec.name
    if isinstance(data, TrainData):
        if resolution is not None:
            raise ConfigError(f"resolution={resolution} does not apply to prepared TrainData (it is {data.resolution}); "
                              "prepare the data at the resolution you want instead")
        ds = data
    else:
        data = data or spec.dataset or "digits"
        if data not in _LOADERS:
            raise ConfigError(f"unknown training data {data!r}; available: "
                              + "; ".join(f"{k} ({v})" for k, v in DATASETS.items()))
        ds = _LOADERS[data](name, resolution)
    epochs = int(epochs if epochs is not None else DEFAULT_EPOCHS.get(name, 10))
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = create(name, num_classes=ds.num_classes, resolution=ds.resolution, seed=seed, width=width, calibrate=False)
    has_val = ds.x_val is not None
    watch = ("val_acc", ds.x_val, ds.y_val) if has_val else ("test_acc", ds.x_test, ds.y_test)
    # Default 1 intra-op thread: on a busy 2-core machine torch's OpenMP threads contend so badly
    # that a MobileNetV2 step at 32x32 took 3-13 s with 2 threads and 0.56 s with 1.
    history = fit(model, ds.x_train, ds.y_train, epochs=epochs, lr=lr or 3e-3, batch_size=batch_size, seed=seed,
                  watch=watch, progress=progress, desc=f"train {name}", threads=threads or 1)
    acc = evaluate(model, ds.x_test, ds.y_test) if has_val else history[-1]["test_acc"]
    model.eval()
    val_acc = history[-1]["val_acc"] if has_val else None
    ckpt = out / f"{name}.pt"
    torch.save({"model": name, "state_dict": model.state_dict(), "num_classes": ds.num_classes, "resolution": ds.resolution,
                "width": width, "accuracy": acc, "val_accuracy": val_acc, "seed": seed, "data": ds.name, "epochs": epochs}, ckpt)
    onnx_path = export(name, out / f"{name}.onnx", model=model, resolution=ds.resolution, width=width)
    return TrainResult(acc, ckpt, onnx_path, name, ds.resolution, epochs, history, time.perf_counter() - t0, ds.name, val_acc)


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch model on NCHW float32 inputs."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(torch.from_numpy(x[i:i + batch_size])).argmax(1).numpy() == y[i:i + batch_size]).sum())
    return correct / len(x)


SCHEDULES = ("onecycle", "cosine")


def fit(model, x: np.ndarray, y: np.ndarray, *, epochs: float, lr: float = 3e-3, weight_decay: float = 1e-4,
        schedule: str = "onecycle", batch_size: int = 64, seed: int = 0, loss: Callable | None = None,
        params: Iterable | None = None, samples: int | None = None, regularizer: Callable | None = None,
        before_step: Callable | None = None, after_step: Callable | None = None,
        watch: tuple[str, np.ndarray, np.ndarray] | None = None, progress: bool = False, desc: str = "train",
        threads: int | None = 1) -> list[dict]:
    """Train torch ``model`` in place on (``x``, ``y``) with AdamW; return one row per epoch: epoch, loss,
    train_acc, the ``watch`` accuracy, seconds since the start.

    Batches are full and reshuffled every epoch (a generator seeded with ``seed``; a remainder batch
    of 3 samples gives BatchNorm statistics noisy enough to derail MobileNetV2); ``samples`` caps the
    samples drawn per epoch. ``epochs`` may be fractional (0.5 = half an epoch's batches; at least one
    step runs). ``schedule``: "onecycle" (peak ``lr`` at 20% of the steps) or "cosine" (from ``lr``).
    ``loss(logits, xb, yb)`` defaults to cross-entropy; ``regularizer(model)`` is added to it;
    ``before_step(step)`` runs before each forward pass (the NAS supernet samples a sub-network there),
    ``after_step(model)`` after each update (pruning re-applies its masks there). ``params`` (tensors or
    AdamW parameter groups) defaults to the model's trainable parameters. ``watch = (key, x, y)``
    adds that split's accuracy to every row. torch's global generator is seeded with ``seed`` inside a
    forked state (dropout is reproducible, the caller's state untouched); ``threads`` intra-op threads
    (None: leave torch's setting) for the run, restored after it."""
    import torch
    import torch.nn.functional as F

    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown learning-rate schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    params = list(params) if params is not None else trainable(model, desc)
    loss = loss or (lambda logits, _xb, yb: F.cross_entropy(logits, yb))
    n = len(x) if not samples else min(int(samples), len(x))
    batch_size = max(2, min(int(batch_size), n))
    per_epoch = max(1, n // batch_size)
    steps = max(1, int(round(epochs * per_epoch)))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step")
    history: list[dict] = []
    total_epochs = -(-steps // per_epoch)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tot, correct, seen, perm = 0.0, 0, 0, None
            for step in range(steps):
                k = step % per_epoch
                if k == 0:
                    model.train()
                    perm = torch.randperm(len(xt), generator=gen)
                idx = perm[k * batch_size:(k + 1) * batch_size]
                xb, yb = xt[idx], yt[idx]
                if before_step is not None:
                    before_step(step)
                logits = model(xb)
                value = loss(logits, xb, yb)
                if regularizer is not None:
                    value = value + regularizer(model)
                opt.zero_grad()
                value.backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step(model)
                tot += value.item() * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=len(history) + 1, loss=f"{tot / seen:.3f}")
                if k == per_epoch - 1 or step == steps - 1:
                    row = {"epoch": len(history) + 1, "loss": tot / seen, "train_acc": correct / seen}
                    if watch is not None:
                        key, xw, yw = watch
                        row[key] = evaluate(model, xw, yw)
                    row["seconds"] = time.perf_counter() - t0
                    history.append(row)
                    log.info("%s epoch %d/%d: %s", desc, row["epoch"], total_epochs,
                             ", ".join(f"{c} {v:.4f}" for c, v in row.items() if c not in ("epoch", "seconds")))
                    if bar is not None:
                        bar.set_postfix(epoch=row["epoch"], loss=f"{row['loss']:.3f}",
                                        **({watch[0]: f"{row[watch[0]]:.3f}"} if watch is not None else {}))
                    tot, correct, seen = 0.0, 0, 0
    finally:
        torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()
        model.eval()
    return history


def trainable(model, what: str = "model") -> list:
    """The parameters of ``model`` that require gradients; a model without any is refused."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{what} ({type(model).__name__}) has no trainable weights (no parameter requires grad): "
                          "pass a torch module whose weights require gradients (e.g. from tuili.zoo.create; "
                          "model.requires_grad_(True) unfreezes one)")
    return params


def subset(data: TrainData, train: int | None = None, test: int | None = None, seed: int = 0) -> TrainData:
    """A smaller copy of ``data`` for quick runs: ``train`` samples of the train split, ``test`` of the
    test and validation splits, each a seeded random choice kept in the data set's order (a prefix
    would miss whole classes of a data set stored class by class)."""
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


def load_checkpoint(path):
    """Rebuild the trained model saved by :func:`train` (eval mode)."""
    import torch

    from tuili.zoo.core import create

    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = create(ck["model"], num_classes=ck["num_classes"], resolution=ck["resolution"], width=ck.get("width"), calibrate=False)
    model.load_state_dict(ck["state_dict"])
    return model.eval()
