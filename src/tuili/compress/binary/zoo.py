"""Binarize a zoo CNN end to end: train its float twin, binarize a copy, train that (starting from
the float weights, as XNOR-Net and Bi-Real do), export the float model and both binary ONNX forms."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tuili.compress.distill.kd import train_plain
from tuili.compress.distill.zoo import load_data
from tuili.zoo.training import TrainData

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BinarizeRun:
    float_accuracy: float
    accuracy: float  # binarized, held-out test split
    layers: list[str]  # binarized conv layers
    float_onnx: Path
    onnx_path: Path  # standard ops: Sign + Conv
    tuili_onnx: Path  # tuili::BinaryConv
    history: list[dict]

    def summary(self) -> str:
        return "\n".join([
            "| model | test acc | onnx |", "|---|---:|---|",
            f"| float | {100 * self.float_accuracy:.2f}% | {self.float_onnx} |",
            f"| binary ({len(self.layers)} conv layers) | {100 * self.accuracy:.2f}% | {self.onnx_path} (Sign + Conv), "
            f"{self.tuili_onnx} (tuili::BinaryConv) |"])


def binarize_zoo(name: str = "glyphs_cnn", *, width: float | None = None, data: str | TrainData = "glyphs",
                 epochs: int = 8, float_epochs: int | None = None, float_checkpoint=None, keep_first: bool = True,
                 binarize_input: bool = True, lr: float = 3e-3, out_dir="binarize_runs", seed: int = 0,
                 progress: bool = True) -> BinarizeRun:
    from tuili.compress.binary.export import to_binary_ops
    from tuili.compress.binary.layers import binarize, deployable
    from tuili.compress.distill.loop import fit
    from tuili.zoo.core import create, export
    from tuili.zoo.training import evaluate, load_checkpoint

    ds = load_data(data, name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if float_checkpoint is not None:
        fmodel = load_checkpoint(float_checkpoint)
        name, width = fmodel.zoo_spec.name, None
        f_acc = evaluate(fmodel, ds.x_test, ds.y_test)
    else:
        init = create(name, width=width, num_classes=ds.num_classes, resolution=ds.resolution, seed=seed, calibrate=False)
        fmodel, f_acc, _ = train_plain(init, ds, epochs=float_epochs or epochs, seed=seed, lr=lr,
                                       progress="float" if progress else False)
    bmodel, layers = binarize(fmodel, keep_first=keep_first, binarize_input=binarize_input)
    import torch.nn.functional as F

    history = fit(bmodel, ds, lambda logits, _x, y: F.cross_entropy(logits, y), epochs=epochs, seed=seed, lr=lr,
                  progress="binary" if progress else False)
    acc = evaluate(bmodel, ds.x_test, ds.y_test)
    run = BinarizeRun(f_acc, acc, layers, out / f"{name}.float.onnx", out / f"{name}.binary.onnx",
                      out / f"{name}.binary.tuili.onnx", history)
    export(name, run.float_onnx, model=fmodel, resolution=ds.resolution, width=width)
    export(name, run.onnx_path, model=deployable(bmodel), resolution=ds.resolution, width=width)
    if binarize_input:
        to_binary_ops(run.onnx_path, run.tuili_onnx)
    else:
        run.tuili_onnx = run.onnx_path  # weights-only binarization keeps float activations: no XNOR form
    log.info("binarized %s: test %.2f%% (float %.2f%%)", name, 100 * acc, 100 * f_acc)
    return run
