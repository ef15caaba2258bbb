"""The Deep Compression pipeline (Han et al., ICLR 2016): prune -> fine-tune -> fold BatchNorm ->
k-means weight sharing -> fine-tune the centroids -> Huffman-coded ``.tdc`` file; each stage's size
and held-out accuracy, as the paper's tables report them."""
from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
from pathlib import Path

from tuili.compress.deep.fileformat import CompressReport, compress, load
from tuili.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Stage:
    name: str
    bytes: int  # weights stored this way (the file, at the last stage)
    accuracy: float | None  # test split, in [0, 1]


@dataclasses.dataclass
class DeepResult:
    stages: list[Stage]
    report: CompressReport
    model: object  # the pruned, shared torch module (BN folded)
    onnx_path: Path  # the float ONNX it exports to (the .tdc decodes to exactly this)

    def table(self) -> str:
        base = self.stages[0]
        lines = ["| stage | bytes | smaller | test top-1 % | drop pt |", "|---|---|---|---|---|"]
        for s in self.stages:
            acc = "" if s.accuracy is None else f"{100 * s.accuracy:.2f}"
            drop = "" if s.accuracy is None or base.accuracy is None else f"{100 * (base.accuracy - s.accuracy):.2f}"
            lines.append(f"| {s.name} | {s.bytes:,} | {base.bytes / max(s.bytes, 1):.1f}x | {acc} | {drop} |")
        return "\n".join(lines)


def fold_batchnorm(model):
    """A copy of ``model`` with every Conv -> BatchNorm pair folded into the Conv (torch.fx), so the
    shared weights are the deployed weights (folding after sharing would rescale every channel)."""
    from torch.fx.experimental.optimization import fuse

    from tuili.compress.prune.graph import _symbolic_trace

    _symbolic_trace(model)  # the same clear error as structured pruning on an untraceable model
    folded = fuse(copy.deepcopy(model).eval(), inplace=True)
    if hasattr(model, "zoo_spec"):
        folded.zoo_spec = model.zoo_spec
    return folded


def deep_compress(model, data, path, *, sparsity: float = 0.9, scope: str = "global", schedule: str = "gradual",
                  steps: int = 16, prune_epochs: float = 2.0, share_epochs: float = 1.0, bits: dict | None = None,
                  lr: float = 1e-3, distill: bool = False, seed: int = 0, progress: bool = True, exclude=()) -> DeepResult:
    """Compress a torch classifier to a ``.tdc`` file at ``path``; fine-tunes on ``data``'s train
    split and measures every stage on its test split. The input module is never modified.

    Pruning runs ``prune_epochs`` in all (:func:`prune_unstructured`; gradual: masks tightened ``steps``
    times over the first half, the second half at ``sparsity``); the centroids are then fine-tuned
    ``share_epochs``. ``distill`` makes the input model the teacher of both fine-tunes."""
    import numpy as np
    import torch

    from tuili.compress.deep.sharing import share_weights, unshare
    from tuili.compress.prune.unstructured import prune_unstructured
    from tuili.compress.train import accuracy, export_onnx, fine_tune, onnx_accuracy

    if data is None:
        raise ConfigError("deep compression fine-tunes after each stage: pass data=TrainData")
    example = torch.from_numpy(np.ascontiguousarray(data.x_test[:2]))
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="tuili-deep-"))
    base_onnx = export_onnx(copy.deepcopy(model), tmp / "baseline.onnx", example)
    stages = [Stage("baseline fp32 (ONNX)", base_onnx.stat().st_size, accuracy(model, data))]
    ramp = prune_epochs / 2 if schedule == "gradual" else 0.0
    pruned = prune_unstructured(model, sparsity, scope=scope, schedule=schedule, steps=steps, data=data,
                                epochs=ramp, final_epochs=prune_epochs - ramp, lr=lr, distill=distill, seed=seed,
                                progress=progress, exclude=exclude)
    folded = fold_batchnorm(pruned.model)
    acc_pruned = accuracy(folded, data)
    shared = copy.deepcopy(folded)
    clusters = share_weights(shared, bits, exclude=exclude)
    log.info("weight sharing: %s", ", ".join(f"{n}: {k}" for n, k in clusters.items()))
    acc_shared0 = accuracy(shared, data)
    fine_tune(shared, data, share_epochs, lr=lr * 0.5, seed=seed + 100, progress=progress, desc="fine-tune centroids",
              teacher=model if distill else None)
    unshare(shared)
    onnx_path = export_onnx(shared, path.with_suffix(".onnx"), example)
    report = compress(onnx_path, path)
    skeleton = report.skeleton_bytes
    stages += [
        Stage(f"pruned {100 * pruned.sparsity:.0f}% (CSR: float32 + gap)", skeleton + sum(t.bits_p for t in report.tensors) // 8,
              acc_pruned),
        Stage("+ weight sharing, before centroid fine-tune", skeleton + sum(t.bits_pq for t in report.tensors) // 8,
              acc_shared0),
        Stage("+ centroid fine-tune (fixed-width indices)", skeleton + sum(t.bits_pq for t in report.tensors) // 8,
              accuracy(shared, data)),
        Stage("+ Huffman: the .tdc file (decoded, onnxruntime)", report.file_bytes, None),
    ]
    restored = tmp / "restored.onnx"
    import onnx

    onnx.save(load(path), str(restored))
    stages[-1].accuracy = onnx_accuracy(restored, data)
    return DeepResult(stages, report, shared, onnx_path)


__all__ = ["DeepResult", "Stage", "deep_compress", "fold_batchnorm"]
