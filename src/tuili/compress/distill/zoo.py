"""Distillation between zoo models, end to end: train (or load) the teacher, train the student
with the teacher and, as the baseline, without it (same seed, epochs and recipe), export ONNX."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tuili.compress.distill.kd import DistillResult, distill, train_plain
from tuili.errors import ConfigError
from tuili.zoo.training import TrainData, digits_data, glyphs_data

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DistillRun:
    result: DistillResult
    teacher_params: int
    student_params: int
    onnx_path: Path
    teacher_onnx: Path
    baseline_accuracy: float | None = None
    baseline_onnx: Path | None = None

    def summary(self) -> str:
        r = self.result
        rows = [("teacher", self.teacher_params, r.teacher_accuracy, self.teacher_onnx),
                ("student (distilled)", self.student_params, r.accuracy, self.onnx_path)]
        if self.baseline_accuracy is not None:
            rows.append(("student (labels only)", self.student_params, self.baseline_accuracy, self.baseline_onnx))
        lines = ["| model | params | test acc | onnx |", "|---|---:|---:|---|"]
        lines += [f"| {n} | {p:,} | {100 * a:.2f}% | {o} |" for n, p, a, o in rows]
        return "\n".join(lines)


def load_data(data: str | TrainData, model: str) -> TrainData:
    if isinstance(data, TrainData):
        return data
    loaders = {"glyphs": glyphs_data, "digits": digits_data}
    if data not in loaders:
        raise ConfigError(f"unknown data set {data!r}; use one of {', '.join(loaders)}")
    return loaders[data](model)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def distill_zoo(teacher: str = "glyphs_cnn", student: str = "glyphs_cnn", *, teacher_width: float | None = 2.0,
                student_width: float | None = 1.0, data: str | TrainData = "glyphs", epochs: int = 8,
                teacher_epochs: int | None = None, teacher_checkpoint=None, baseline: bool = True, alpha: float = 0.9,
                temperature: float = 4.0, hints: list[tuple[str, str]] | str | None = "auto", hint_weight: float = 1.0,
                out_dir="distill_runs", seed: int = 0, progress: bool = True) -> DistillRun:
    """``hints="auto"``: the pair ("features", "features") where both models have a ``features`` block
    (every zoo CNN), else none."""
    from tuili.compress.distill.kd import check_alpha, check_temperature
    from tuili.zoo.core import create, export
    from tuili.zoo.training import evaluate, load_checkpoint

    check_alpha(alpha)
    check_temperature(temperature)
    ds = load_data(data, student)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(num_classes=ds.num_classes, resolution=ds.resolution, seed=seed, calibrate=False)
    if teacher_checkpoint is not None:
        t_model = load_checkpoint(teacher_checkpoint)
        teacher = t_model.zoo_spec.name
        log.info("teacher %s from %s: test %.2f%%", teacher, teacher_checkpoint, 100 * evaluate(t_model, ds.x_test, ds.y_test))
    else:
        t_model, t_acc, _ = train_plain(create(teacher, width=teacher_width, **kw), ds, epochs=teacher_epochs or epochs,
                                        seed=seed, progress="teacher" if progress else False)
    s_init = create(student, width=student_width, **kw)
    if hints == "auto":
        names = [dict(m.named_modules()) for m in (t_model, s_init)]
        hints = [("features", "features")] if all("features" in n for n in names) else []
    result = distill(t_model, s_init, ds, epochs=epochs, alpha=alpha, temperature=temperature, hints=hints,
                     hint_weight=hint_weight, seed=seed, progress="distill" if progress else False)
    t_width = teacher_width if teacher_checkpoint is None else None
    run = DistillRun(result, params(t_model), params(s_init), out / f"{student}.distilled.onnx", out / f"{teacher}.teacher.onnx")
    export(student, run.onnx_path, model=result.student, resolution=ds.resolution, width=student_width)
    export(teacher, run.teacher_onnx, model=t_model, resolution=ds.resolution, width=t_width)
    if baseline:
        b_model, run.baseline_accuracy, _ = train_plain(s_init, ds, epochs=epochs, seed=seed,
                                                         progress="baseline" if progress else False)
        run.baseline_onnx = out / f"{student}.baseline.onnx"
        export(student, run.baseline_onnx, model=b_model, resolution=ds.resolution, width=student_width)
    return run
