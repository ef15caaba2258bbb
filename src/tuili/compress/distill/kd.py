"""Knowledge distillation: Hinton's soft targets and FitNets hints, on torch modules.

    result = distill(teacher, student, data, epochs=8, alpha=0.9, temperature=4.0, hints=[("features", "features")])

* **Logits** (Hinton et al. 2015): ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``;
  T^2 keeps the soft term's gradients on the scale of the hard term's as T grows.
* **Features** (Romero et al. 2015, FitNets): the student's "guided" layer output goes through a learned
  adapter (1x1 Conv for 4-D feature maps, Linear otherwise) to the teacher's "hint" layer's width, and
  ``hint_weight * MSE(adapter(student), teacher)`` joins the loss. FitNets trains the hint in a first stage;
  here it is one stage, the hint term added to the distillation loss throughout (simpler, as good on these nets).

The teacher is only run (no_grad, eval mode restored afterwards); the student passed in is copied, never trained
in place; the trained copy comes back in :class:`DistillResult`.
"""
from __future__ import annotations

import copy
import dataclasses
import logging

from tuili.compress.distill.loop import fit, trainable
from tuili.errors import ConfigError
from tuili.zoo.training import TrainData, evaluate

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DistillResult:
    student: object  # the trained torch module (eval mode)
    accuracy: float  # top-1 on the held-out test split
    history: list[dict]
    teacher_accuracy: float
    alpha: float
    temperature: float
    hints: list[tuple[str, str]]


def check_alpha(alpha: float) -> float:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha={alpha}: the soft-target weight must be in [0, 1] (0 = labels only, 1 = teacher only)")
    return float(alpha)


def check_temperature(temperature: float) -> float:
    if not 0.0 < float(temperature) <= 100.0:
        raise ConfigError(f"temperature={temperature}: must be in (0, 100]; 1 is the plain softmax, 2-8 is usual")
    return float(temperature)


def kd_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """Hinton's distillation loss (see the module doc)."""
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
                    log_target=True) * (t * t)
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def _module(model, name: str, who: str):
    mods = dict(model.named_modules())
    if name not in mods:
        names = [n for n in mods if n][:30]
        raise ConfigError(f"{who} has no layer {name!r}; its layers include: {', '.join(names)}")
    return mods[name]


class _Capture:
    """Keeps the last output of one module (a forward hook)."""

    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        self.value = output

    def close(self):
        self.handle.remove()


def _adapter(s_shape, t_shape, where: str):
    from torch import nn

    if len(s_shape) != len(t_shape):
        raise ConfigError(f"hint {where}: student features {tuple(s_shape)} and teacher features {tuple(t_shape)} "
                          "differ in rank; pick layers of the same kind (both conv feature maps or both vectors)")
    if len(s_shape) == 4:
        return nn.Conv2d(s_shape[1], t_shape[1], 1)
    return nn.Linear(s_shape[-1], t_shape[-1])


def _probe(teacher, student, x):
    import torch

    modes = [m.training for m in (teacher, student)]
    teacher.eval()
    student.eval()
    try:
        with torch.no_grad():
            return teacher(x), student(x)
    finally:
        teacher.train(modes[0])
        student.train(modes[1])


def distill(teacher, student, data: TrainData, *, epochs: int, alpha: float = 0.9, temperature: float = 4.0,
            hints: list[tuple[str, str]] | None = None, hint_weight: float = 1.0, seed: int = 0, lr: float = 3e-3,
            batch_size: int = 64, progress: bool | str = True) -> DistillResult:
    """Train a copy of ``student`` on ``data`` with ``teacher``'s soft targets (and hints: pairs of
    (teacher layer, student layer) names, as ``model.named_modules()`` spells them)."""
    import torch
    import torch.nn.functional as F

    alpha, temperature = check_alpha(alpha), check_temperature(temperature)
    if hint_weight < 0:
        raise ConfigError(f"hint_weight={hint_weight}: must be >= 0")
    trainable(student, "student")
    student = copy.deepcopy(student)
    teacher_mode = teacher.training
    hints = [tuple(h) for h in (hints or [])]
    probe = torch.from_numpy(data.x_train[:2])
    captures = [(_Capture(_module(teacher, t, "teacher")), _Capture(_module(student, s, "student"))) for t, s in hints]
    try:
        t_out, s_out = _probe(teacher, student, probe)
        if tuple(t_out.shape) != tuple(s_out.shape):
            raise ConfigError(f"the student's output {tuple(s_out.shape)} does not match the teacher's "
                              f"{tuple(t_out.shape)} on the same batch; give the student the teacher's number of "
                              "classes (num_classes)")
        adapters = torch.nn.ModuleList()
        for (tc, sc), (t, s) in zip(captures, hints):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                adapters.append(_adapter(sc.value.shape, tc.value.shape, f"{t} <- {s}"))
        teacher.eval()

        def loss(logits, xb, yb):
            with torch.no_grad():
                t_logits = teacher(xb)
            value = kd_loss(logits, t_logits, yb, alpha, temperature)
            for (tc, sc), adapt in zip(captures, adapters):
                f = adapt(sc.value)
                if f.shape[2:] != tc.value.shape[2:]:
                    f = F.adaptive_avg_pool2d(f, tc.value.shape[2:])
                value = value + hint_weight * F.mse_loss(f, tc.value)
            return value

        history = fit(student, data, loss, epochs=epochs, extra=adapters.parameters(), seed=seed, lr=lr,
                      batch_size=batch_size, progress=progress)
        teacher_acc = evaluate(teacher, data.x_test, data.y_test)
    finally:
        for pair in captures:
            for c in pair:
                c.close()
        teacher.train(teacher_mode)
    acc = evaluate(student, data.x_test, data.y_test)
    log.info("distilled student: test %.2f%% (teacher %.2f%%)", 100 * acc, 100 * teacher_acc)
    return DistillResult(student, acc, history, teacher_acc, alpha, temperature, list(hints))


def train_plain(model, data: TrainData, *, epochs: int, seed: int = 0, lr: float = 3e-3, batch_size: int = 64,
                progress: bool | str = True):
    """A copy of ``model`` trained on the labels alone (the baseline a distilled student is compared with);
    returns (trained model, test accuracy, history)."""
    import torch.nn.functional as F

    trainable(model)
    model = copy.deepcopy(model)
    history = fit(model, data, lambda logits, _x, y: F.cross_entropy(logits, y), epochs=epochs, seed=seed, lr=lr,
                  batch_size=batch_size, progress=progress)
    return model, evaluate(model, data.x_test, data.y_test), history
