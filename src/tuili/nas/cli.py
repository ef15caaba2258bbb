"""`tuili nas`: hardware-aware architecture search on glyphs, measured on this machine."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("nas", help="search a network for a latency budget measured on this machine (glyphs task)",
                       description="Measure a per-block latency table on the chosen engine (cached), fit a latency "
                                   "predictor, train a weight-sharing supernet, search under the budget, fine-tune "
                                   "and export the winner; writes report.md and pareto.png next to it.")
    p.add_argument("--budget-ms", type=float, default=None, help="latency budget per batch, in ms (required unless --pareto)")
    p.add_argument("--engine", default="onnxruntime", help="engine the latency is measured on: onnxruntime | tuili")
    p.add_argument("--batch", type=int, default=1, help="batch size the latency is measured at (default 1)")
    p.add_argument("--threads", type=int, default=1, help="engine threads while timing (default 1)")
    p.add_argument("-o", "--output", type=Path, default=Path("best.onnx"), help="where the winner's ONNX goes")
    p.add_argument("--out-dir", type=Path, default=None, help="report, plot and resumable state (default: OUTPUT_nas/)")
    p.add_argument("--strategy", default="evolution", help="evolution (regularized) | random")
    p.add_argument("--pareto", action="store_true", help="multi-objective: evolve along the accuracy-latency front")
    p.add_argument("--evaluations", type=int, default=None, help="architectures to evaluate (default 150; --quick 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="minutes: a glyphs subset, short training, few evaluations")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from tuili.nas.pipeline import NasConfig, run_nas

    kw = dict(budget_ms=args.budget_ms, engine=args.engine, batch=args.batch, threads=args.threads, output=args.output,
              out_dir=args.out_dir, strategy=args.strategy, pareto=args.pareto, seed=args.seed, progress=not args.no_progress)
    if args.evaluations is not None:
        kw["evaluations"] = args.evaluations
    cfg = NasConfig.quick(**kw) if args.quick else NasConfig(**kw)
    cfg.check()  # bad options fail before anything is measured
    r = run_nas(cfg)
    w = r.summary["winner"]
    print(f"winner {w['key']}: test accuracy {100 * r.test_accuracy:.2f}%, {r.measured_ms:.3f} ms measured on "
          f"{cfg.engine} (predicted {w['predicted_ms']:.3f} ms, budget {cfg.budget_ms} ms)")
    print(f"wrote {r.output}, {r.report}, {r.plot}")
    return 0
