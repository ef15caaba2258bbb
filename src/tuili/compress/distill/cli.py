"""`tuili distill --teacher glyphs_cnn --teacher-width 2 --student glyphs_cnn --student-width 1 --data glyphs -o out/`."""
from __future__ import annotations

import argparse


def _hint(text: str) -> tuple[str, str]:
    teacher, sep, student = text.partition(":")
    if not sep or not teacher or not student:
        raise argparse.ArgumentTypeError(f"--hint {text!r}: give TEACHER_LAYER:STUDENT_LAYER, e.g. features:features")
    return teacher, student


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="train a small zoo model from a larger one (knowledge distillation)",
                       description="Knowledge distillation between zoo CNNs: the teacher is trained (or loaded with "
                                   "--teacher-checkpoint), the student learns from its soft targets (Hinton: --alpha, "
                                   "--temperature) and, by default, from its 'features' block through a learned 1x1 "
                                   "adapter (FitNets hints). The same student trained on labels alone (same seed and "
                                   "epochs) is the baseline. Writes ONNX for teacher, student and baseline.")
    p.add_argument("--teacher", default="glyphs_cnn", help="zoo model of the teacher (default glyphs_cnn)")
    p.add_argument("--teacher-width", type=float, default=2.0, help="teacher width multiplier (default 2)")
    p.add_argument("--teacher-checkpoint", metavar="PT", help="a trained teacher (.pt from `tuili zoo train`) instead of training one")
    p.add_argument("--teacher-epochs", type=int, help="epochs for the teacher (default: --epochs)")
    p.add_argument("--student", default="glyphs_cnn", help="zoo model of the student (default glyphs_cnn)")
    p.add_argument("--student-width", type=float, default=1.0, help="student width multiplier (default 1)")
    p.add_argument("--data", default="glyphs", choices=["glyphs", "digits"], help="training data (default glyphs)")
    p.add_argument("--epochs", type=int, default=8, help="epochs for student and baseline (default 8)")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the soft-target loss in [0, 1] (default 0.9)")
    p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature, > 0 (default 4)")
    p.add_argument("--hint", action="append", type=_hint, metavar="T_LAYER:S_LAYER",
                   help="feature hint (repeatable); default features:features where both have it")
    p.add_argument("--no-hints", action="store_true", help="logit distillation only")
    p.add_argument("--hint-weight", type=float, default=1.0, help="weight of the hint loss (default 1)")
    p.add_argument("--no-baseline", action="store_true", help="skip the labels-only student")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="distill_runs", help="output directory (default distill_runs)")
    p.set_defaults(func=distill_command)


def distill_command(args: argparse.Namespace) -> int:
    from tuili.compress.distill import distill_zoo
    from tuili.errors import ConfigError

    if args.no_hints and args.hint:
        raise ConfigError("--no-hints and --hint contradict each other; give one")
    if args.teacher_checkpoint and args.teacher_epochs is not None:
        raise ConfigError("--teacher-epochs does not apply with --teacher-checkpoint (the teacher is already trained)")
    hints = [] if args.no_hints else (args.hint or "auto")
    run = distill_zoo(args.teacher, args.student, teacher_width=args.teacher_width, student_width=args.student_width,
                      data=args.data, epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                      teacher_checkpoint=args.teacher_checkpoint, baseline=not args.no_baseline, alpha=args.alpha,
                      temperature=args.temperature, hints=hints, hint_weight=args.hint_weight, out_dir=args.output,
                      seed=args.seed)
    print(run.summary())
    return 0
