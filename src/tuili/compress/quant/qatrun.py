"""QAT of a trained zoo classifier end to end, with its PTQ baseline: what `tuili qat` runs.

    run = qat_zoo("digits_cnn.pt", "digits.qat.onnx", epochs=2, weight_bits=4)
    print(run.summary())          # top-1 on the held-out test split: fp32 / PTQ / QAT, sizes

The model is a checkpoint written by `tuili zoo train` (its data set and resolution come with it) or a
zoo model name, trained first with its default recipe and cached under ``$TUILI_CACHE_DIR/qat``.
Calibration (the quantizers' initial ranges, and the PTQ baseline) and fine-tuning use the TRAIN split;
accuracy is measured in onnxruntime on the TEST split, never used for either. The PTQ baseline is
:func:`quantize_static` on the same samples with the same bits; 4-bit activations are run at graph
optimization level basic (onnxruntime's QDQ fusion cannot fuse uint4, see :mod:`.qat`).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuili.errors import ConfigError, ModelLoadError

from .ptq import DEFAULT_METHOD, check_paths, quantize_static
from .qat import check_bits, export_qat, finetune_qat, prepare_qat
from .report import Report

log = logging.getLogger(__name__)

TRAINED_DIR = "qat"  # under the cache root: zoo models trained for `tuili qat MODEL_NAME`


@dataclass
class QATRun:
    model: str
    output: Path
    bits: str  # "W/A"
    top1: dict[str, float]  # "fp32" / "PTQ" / "QAT" -> top-1 % on the test split
    size: dict[str, int]  # same keys -> bytes of the ONNX file
    test_samples: int
    epochs: float
    history: list[dict] = field(default_factory=list)
    report: Report | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"QAT of {self.model} (W/A bits {self.bits}, {self.epochs:g} epoch(s)) -> {self.output} in "
                 f"{self.seconds:.1f} s", f"top-1 on the test split ({self.test_samples} samples, onnxruntime):"]
        base = self.top1["fp32"]
        for k, acc in self.top1.items():
            drop = "" if k == "fp32" else f"  ({acc - base:+.2f} pt vs fp32)"
            lines.append(f"  {k:5s} {acc:6.2f} %  {self.size[k] / 1e3:8.1f} kB{drop}")
        if self.report is not None:
            lines += ["", self.report.summary()]
        return "\n".join(lines)


def load_trained(model: str, train_epochs: int | None = None, progress: bool = True):
    """(torch module, TrainData, checkpoint path) from a `tuili zoo train` checkpoint or a zoo model name."""
    import torch

    from tuili import zoo
    from tuili.data import cache_dir
    from tuili.zoo.training import glyphs_data

    path = Path(model)
    if not (model.endswith(".pt") or path.is_file()):
        spec = zoo.get_spec(model)  # unknown names raise, naming the zoo's models
        if spec.is_text or (spec.dataset or "digits") not in ("digits", "glyphs"):
            raise ConfigError(f"{spec.name} is not a digits/glyphs classifier; `tuili qat` fine-tunes those (or give "
                              "a checkpoint from `tuili zoo train`)")
        out = cache_dir() / TRAINED_DIR
        path = out / f"{spec.name}.pt"
        if path.exists() and train_epochs is None:
            log.info("using %s (trained earlier; delete it to retrain)", path)
        else:
            log.info("training %s first (fp32)", spec.name)
            path = zoo.train(spec.name, epochs=train_epochs, out_dir=out, progress=progress).checkpoint
    elif train_epochs is not None:
        raise ConfigError("--train-epochs applies to a zoo model name; the checkpoint given is already trained")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        net = zoo.load_checkpoint(path)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise ModelLoadError(f"cannot read checkpoint {path}: {e}; give a .pt written by `tuili zoo train` or a zoo "
                             "model name") from e
    loader = zoo.digits_data if ck.get("data", "digits") == "digits" else glyphs_data
    return net, loader(ck["model"], ck["resolution"]), path


def onnx_top1(path, x: np.ndarray, y: np.ndarray, basic: bool = False, batch: int = 512) -> float:
    """Top-1 % of an ONNX classifier in onnxruntime (``basic``: graph optimizations at basic level)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])
    return 100 * float((pred == y).mean())


def qat_zoo(model: str, output, *, epochs: float = 2, weight_bits: int = 8, activation_bits: int = 8,
            weight_type: str = "int8", calib_samples: int = 512, samples: int | None = None, lr: float = 5e-4,
            method: str = DEFAULT_METHOD, seed: int = 0, train_epochs: int | None = None,
            progress: bool = True) -> QATRun:
    """Fine-tune trained zoo classifier ``model`` (checkpoint or name) with QAT, write the QDQ model to
    ``output``, and measure fp32 / PTQ / QAT top-1 on its test split. ``samples`` caps the training
    samples per epoch; ``calib_samples`` train samples initialise the quantizers and calibrate PTQ."""
    from tuili.compress.train import export_onnx

    if Path(model).is_file():
        check_paths(model, output)
    check_bits(weight_bits, activation_bits, weight_type)
    if not epochs > 0:
        raise ConfigError(f"--epochs {epochs}: give a positive number of epochs (fractions allowed)")
    if calib_samples < 1:
        raise ConfigError(f"--calib-samples {calib_samples}: give at least one sample")
    t0 = time.perf_counter()
    net, data, _ = load_trained(model, train_epochs, progress)
    calib = data.x_train[np.sort(np.random.default_rng(seed).permutation(len(data.x_train))[:calib_samples])]
    basic = activation_bits == 4
    with tempfile.TemporaryDirectory() as d:
        fp32 = export_onnx(net, Path(d) / "fp32.onnx", _torch(data.x_test[:2]))
        ptq = Path(d) / "ptq.onnx"
        quantize_static(fp32, ptq, {"input": calib}, method=method, weight_bits=weight_bits, weight_type=weight_type,
                        activation_type="uint4" if basic else "uint8", reduce_range=False if weight_bits < 8 else None)
        top1 = {"fp32": onnx_top1(fp32, data.x_test, data.y_test), "PTQ": onnx_top1(ptq, data.x_test, data.y_test, basic)}
        size = {"fp32": os.path.getsize(fp32), "PTQ": os.path.getsize(ptq)}
    qm = prepare_qat(net, calib, weight_bits=weight_bits, activation_bits=activation_bits, weight_type=weight_type,
                     method=method)
    history = finetune_qat(qm, data, epochs=epochs, lr=lr, samples=samples, seed=seed, progress=progress)
    report = export_qat(qm, output, calib, method=method)
    report.model_in = model
    top1["QAT"] = onnx_top1(output, data.x_test, data.y_test, basic)
    size["QAT"] = os.path.getsize(output)
    return QATRun(model, Path(output), f"{weight_bits}/{activation_bits}", top1, size, len(data.x_test), epochs,
                  history, report, time.perf_counter() - t0)


def _torch(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


__all__ = ["QATRun", "load_trained", "onnx_top1", "qat_zoo"]
