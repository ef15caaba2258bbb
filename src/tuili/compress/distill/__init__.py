"""tuili.compress.distill — knowledge distillation (Hinton soft targets, FitNets hints) on torch modules.

    from tuili.compress.distill import distill, distill_zoo
    result = distill(teacher, student, data, epochs=8, alpha=0.9, temperature=4.0, hints=[("features", "features")])
    run = distill_zoo("glyphs_cnn", "glyphs_cnn", teacher_width=2.0, student_width=1.0, data="glyphs")

Modules: ``loop`` (the training loop distillation and binarization share), ``kd`` (losses, hints,
:func:`distill`), ``zoo`` (teacher -> student between zoo models, baseline, ONNX export), ``cli``.
"""
from tuili.compress.distill.kd import DistillResult, check_alpha, check_temperature, distill, kd_loss, train_plain
from tuili.compress.distill.loop import fit, subset, trainable
from tuili.compress.distill.zoo import DistillRun, distill_zoo

__all__ = ["DistillResult", "DistillRun", "check_alpha", "check_temperature", "distill", "distill_zoo", "fit",
           "kd_loss", "subset", "train_plain", "trainable"]
