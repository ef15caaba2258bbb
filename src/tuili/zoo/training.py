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
"""
from __future__ import annotations

import dataclasses
import logging
import time
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
    from torch import nn

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
    lr = lr or 3e-3
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    batch_size = max(2, min(int(batch_size), len(ds.x_train)))
    steps = epochs * (len(ds.x_train) // batch_size)  # full batches only (reshuffled every epoch):
    # a 3-sample remainder batch gives BatchNorm statistics noisy enough to derail MobileNetV2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    xtr, ytr = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    has_val = ds.x_val is not None
    watch = ("val_acc", ds.x_val, ds.y_val) if has_val else ("test_acc", ds.x_test, ds.y_test)
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train {name}", unit="step")
    history = []
    saved_threads = torch.get_num_threads()
    # Default 1 intra-op thread: on a busy 2-core machine torch's OpenMP threads contend so badly
    # that a MobileNetV2 step at 32x32 took 3-13 s with 2 threads and 0.56 s with 1.
    torch.set_num_threads(threads or 1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for ep in range(epochs):
                model.train()
                perm = torch.randperm(len(xtr), generator=gen)
                tot, correct, n = 0.0, 0, 0
                for i in range(0, len(perm) - batch_size + 1, batch_size):
                    idx = perm[i:i + batch_size]
                    xb, yb = xtr[idx], ytr[idx]
                    logits = model(xb)
                    loss = loss_fn(logits, yb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    tot += loss.item() * len(idx)
                    correct += int((logits.argmax(1) == yb).sum())
                    n += len(idx)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=ep + 1, loss=f"{tot / n:.3f}")
                key, xw, yw = watch
                acc = evaluate(model, xw, yw)
                row = {"epoch": ep + 1, "loss": tot / max(n, 1), "train_acc": correct / max(n, 1), key: acc}
                history.append(row)
                log.info("%s epoch %d/%d: loss %.4f, train %.2f%%, %s %.2f%%", name, ep + 1, epochs, row["loss"],
                         100 * row["train_acc"], key[:-4], 100 * acc)
                if bar is not None:
                    bar.set_postfix(epoch=ep + 1, loss=f"{row['loss']:.3f}", **{key: f"{acc:.3f}"})
            acc = evaluate(model, ds.x_test, ds.y_test) if has_val else history[-1]["test_acc"]
    finally:
        torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()
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


def load_checkpoint(path):
    """Rebuild the trained model saved by :func:`train` (eval mode)."""
    import torch

    from tuili.zoo.core import create

    ck = torch.load(path, map_location="cpu", weights_only=True)
    model = create(ck["model"], num_classes=ck["num_classes"], resolution=ck["resolution"], width=ck.get("width"), calibrate=False)
    model.load_state_dict(ck["state_dict"])
    return model.eval()
