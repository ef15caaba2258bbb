"""Fine-tune a zoo CNN on scikit-learn's digits (real data, real accuracy, no downloads).

The 1,797 8x8 images are split once (25% test, stratified, ``random_state=0``), so every run
and every later stage (quantization, pruning, distillation) measures on the same test set.
``digits_cnn`` takes the raw 8x8 images (pixel values 0..16); any other CNN gets them upsampled
(bilinear) to its minimum input size, scaled to [-1, 1] and repeated over 3 channels.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from tuili.errors import ConfigError
from tuili.zoo.registry import get_spec

log = logging.getLogger(__name__)

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@dataclasses.dataclass
class TrainResult:
    accuracy: float  # top-1 on the held-out test split, in [0, 1]
    checkpoint: Path
    onnx_path: Path
    model: str = ""
    resolution: int | None = None
    epochs: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # per epoch: loss, train_acc, test_acc
    seconds: float = 0.0


@dataclasses.dataclass
class DigitsData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    resolution: int
    channels: int


def digits_data(name: str = "digits_cnn", resolution: int | None = None) -> DigitsData:
    """scikit-learn digits prepared as model ``name`` expects them (float32 NCHW, int64 labels)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    spec = get_spec(name)
    name = spec.name
    if spec.is_text:
        raise ConfigError(f"{name} is a {spec.task} model; the digits data set needs an image model")
    ds = load_digits()
    x = ds.images.astype(np.float32)  # [N, 8, 8], 0..16
    y = ds.target.astype(np.int64)
    if name == "digits_cnn":
        r = resolution or 8
        x = x[:, None]
        if r != 8:
            x = _resize(x, r)
        ch = 1
    else:
        r = resolution or spec.min_resolution or spec.default_resolution
        x = _resize(x[:, None] / 16.0 * 2.0 - 1.0, r)
        x = np.repeat(x, spec.in_channels, axis=1)
        ch = spec.in_channels
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return DigitsData(np.ascontiguousarray(xtr, np.float32), ytr, np.ascontiguousarray(xte, np.float32), yte, r, ch)


def _resize(x: np.ndarray, r: int) -> np.ndarray:
    import torch

    t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x, np.float32)), size=(r, r), mode="bilinear", align_corners=False)
    return t.numpy()


DEFAULT_EPOCHS = {"digits_cnn": 8}  # others: 10 (at 32x32: ResNet-18 98% in 6 epochs, MobileNetV2 95% in 8)


def train(name: str, data: str = "digits", epochs: int | None = None, out_dir="zoo_runs", seed: int = 0,
          progress: bool = True, batch_size: int = 64, lr: float | None = None, resolution: int | None = None,
          width: float | None = None, threads: int | None = None) -> TrainResult:
    """Train zoo model ``name`` on ``data`` (only "digits" exists); save ``NAME.pt`` and ``NAME.onnx``
    under ``out_dir``; return the test accuracy and both paths."""
    import torch
    from torch import nn

    from tuili.zoo.core import create, export

    if data != "digits":
        raise ConfigError(f"unknown training data {data!r}; available: digits (scikit-learn's 8x8 handwritten digits)")
    spec = get_spec(name)
    name = spec.name
    ds = digits_data(name, resolution)
    epochs = int(epochs if epochs is not None else DEFAULT_EPOCHS.get(name, 10))
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = create(name, num_classes=10, resolution=ds.resolution, seed=seed, width=width, calibrate=False)
    lr = lr or 3e-3
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    batch_size = max(2, min(int(batch_size), len(ds.x_train)))
    steps = epochs * (len(ds.x_train) // batch_size)  # full batches only (reshuffled every epoch):
    # a 3-sample remainder batch gives BatchNorm statistics noisy enough to derail MobileNetV2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    xtr, ytr = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
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
            acc = evaluate(model, ds.x_test, ds.y_test)
            history.append({"epoch": ep + 1, "loss": tot / max(n, 1), "train_acc": correct / max(n, 1), "test_acc": acc})
            log.info("%s epoch %d: loss %.4f train %.4f test %.4f", name, ep + 1, tot / max(n, 1), correct / max(n, 1), acc)
            if bar is not None:
                bar.set_postfix(epoch=ep + 1, loss=f"{tot / max(n, 1):.3f}", test_acc=f"{acc:.3f}")
    torch.set_num_threads(saved_threads)
    if bar is not None:
        bar.close()
    model.eval()
    acc = history[-1]["test_acc"]
    ckpt = out / f"{name}.pt"
    torch.save({"model": name, "state_dict": model.state_dict(), "num_classes": 10, "resolution": ds.resolution,
                "width": width, "accuracy": acc, "seed": seed, "data": data, "epochs": epochs}, ckpt)
    onnx_path = export(name, out / f"{name}.onnx", model=model, resolution=ds.resolution, width=width)
    return TrainResult(acc, ckpt, onnx_path, name, ds.resolution, epochs, history, time.perf_counter() - t0)


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
