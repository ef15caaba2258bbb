"""Hardware-aware NAS on glyphs (issue 14's goals as one measured report).

    python benchmarks/nas.py [--quick] [--engine onnxruntime|tuili] [--width 1.0] [--out nas_bench/]

1. The zoo's MobileNetV2 (glyphs-sized 32x32 input, 62 classes) is trained on glyphs (zoo.train) and its
   latency measured on the engine at batch 1; that latency is the search budget.
2. `tuili nas` (tuili.nas.run_nas) searches under it; the fine-tuned winner's test accuracy and measured
   latency are set beside MobileNetV2's.
3. Random search runs with the same supernet evaluator and predictor for the same number of evaluations:
   best-so-far plot of both.
4. The latency predictor's MAPE on 50 random networks measured end to end.
5. >= 10 random sub-networks trained standalone: Kendall tau of the supernet-inherited accuracy, synflow and
   NASWOT against their standalone accuracy.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="subsets and short training (minutes): checks the pipeline")
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width multiplier (0.5 or 1.0)")
    ap.add_argument("--mnv2-epochs", type=int, default=8)
    ap.add_argument("--standalone", type=int, default=10, help="sub-networks trained standalone for Kendall tau")
    ap.add_argument("--standalone-epochs", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path("nas_bench"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from tuili import zoo
    from tuili.nas.latency import time_model
    from tuili.nas.pipeline import NasConfig, glyph_splits, run_nas, trained_supernet
    from tuili.nas.proxies import kendall_tau, naswot, synflow
    from tuili.nas.report import best_so_far_plot
    from tuili.nas.search import Search, best_so_far
    from tuili.nas.space import SearchSpace
    from tuili.nas.supernet import fit, inherited_accuracy
    from tuili.runtime import cpu

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    epochs = 1 if args.quick else args.mnv2_epochs
    mnv2 = zoo.train("mobilenet_v2", data="glyphs", epochs=epochs, width=args.width, out_dir=out / "mnv2", progress=False)
    shape = (3, 32, 32)
    onnx1 = zoo.export("mobilenet_v2", out / "mnv2_b1.onnx", batch=1, resolution=32, width=args.width, num_classes=62)
    mnv2_ms = 1e3 * time_model(onnx1.read_bytes(), shape, args.engine, 1, 1, budget=1.0)

    make = NasConfig.quick if args.quick else NasConfig
    cfg = make(budget_ms=mnv2_ms, engine=args.engine, output=out / "best.onnx", out_dir=out / "run", progress=False,
               check_archs=8 if args.quick else 50)
    res = run_nas(cfg)
    # the winner and MobileNetV2 timed again, interleaved, so load changes hit both alike
    from tuili.bench.timing import time_interleaved
    from tuili.runtime.session import InferenceSession

    rng = np.random.default_rng(0)
    sessions = {"mnv2": (InferenceSession(str(onnx1), engine=args.engine, threads=1), rng.standard_normal((1, *shape), dtype=np.float32)),
                "nas": (InferenceSession(str(res.output), engine=args.engine, threads=1), rng.random((1, 1, 32, 32), dtype=np.float32))}
    timed = time_interleaved({k: (lambda s=s, x=x: s.run(None, {"input": x})) for k, (s, x) in sessions.items()},
                             warmup=20, repeat=3000, min_repeat=100, budget=2.0, settle=0.05)
    mnv2_ms2, nas_ms2 = 1e3 * timed["mnv2"][0], 1e3 * timed["nas"][0]

    # evolution vs random at equal evaluation count (same evaluator, same predictor)
    space = SearchSpace()
    xtr, ytr, xval, yval, xte, yte = glyph_splits(cfg)
    sn, _ = trained_supernet(space, cfg, xtr, ytr)
    from tuili.nas.pipeline import latency_model

    predictor, lat = latency_model(space, cfg)
    calib = xtr[:cfg.calib_images]

    def evaluate(a):
        return inherited_accuracy(sn, a, calib, xval, yval)

    evo = Search(space, evaluate, predictor.predict, budget=mnv2_ms / 1e3, population=cfg.population,
                 sample_size=cfg.sample_size, seed=cfg.seed, state_path=out / "run" / "search_state.json")
    rnd = Search(space, evaluate, predictor.predict, budget=mnv2_ms / 1e3, strategy="random", seed=cfg.seed,
                 state_path=out / "random_state.json")
    curves = {"regularized evolution": best_so_far(evo.run(cfg.evaluations)), "random search": best_so_far(rnd.run(cfg.evaluations))}
    plot = best_so_far_plot(curves, out / "evolution_vs_random.png", title=f"glyphs, budget {mnv2_ms:.3f} ms ({args.engine})")

    # Kendall tau on standalone-trained sub-networks
    n_alone = max(10, args.standalone)
    sub_rng = np.random.default_rng(123)
    archs = [space.sample(sub_rng) for _ in range(n_alone)]
    xs, ys = (xtr[:4096], ytr[:4096]) if args.quick else (xtr, ytr)
    alone, inherited, syn, nwot = [], [], [], []
    for i, a in enumerate(archs):
        net = space.build(a, seed=i)
        syn.append(synflow(net, (1, 32, 32)))
        nwot.append(naswot(net, xtr[:64]))
        fit(net, xs, ys, epochs=0.5 if args.quick else args.standalone_epochs, seed=i)
        alone.append(zoo.evaluate(net, xval, yval))
        inherited.append(evaluate(a))
    taus = {"supernet (inherited, BN recalibrated)": kendall_tau(inherited, alone), "synflow": kendall_tau(syn, alone),
            "NASWOT": kendall_tau(nwot, alone)}

    w = res.summary["winner"]
    print(f"\n### NAS on glyphs ({'quick' if args.quick else 'full'}), engine {args.engine}, batch 1, 1 thread\n")
    print(f"CPU: {cpu.info().describe()}\n")
    print("| network | test accuracy | latency (search time) | latency (interleaved) | params |")
    print("|---|---|---|---|---|")
    print(f"| zoo mobilenet_v2 w{args.width:g} ({epochs} epochs) | {100 * mnv2.accuracy:.2f}% | {mnv2_ms:.3f} ms | "
          f"{mnv2_ms2:.3f} ms | {sum(p.numel() for p in zoo.load_checkpoint(mnv2.checkpoint).parameters()) / 1e3:.0f} K |")
    print(f"| searched `{w['key']}` | {100 * res.test_accuracy:.2f}% | {res.measured_ms:.3f} ms | {nas_ms2:.3f} ms | "
          f"{w['params'] / 1e3:.0f} K |")
    print(f"\nGoal (>= 1 pt more accurate, or equal and >= 1.25x faster): accuracy {100 * (res.test_accuracy - mnv2.accuracy):+.2f} pt, "
          f"speed {mnv2_ms2 / nas_ms2:.2f}x")
    print(f"\nEvolution vs random, {cfg.evaluations} evaluations each: best {100 * curves['regularized evolution'][-1]:.2f}% vs "
          f"{100 * curves['random search'][-1]:.2f}% (val, inherited weights); plot {plot}")
    print(f"\nLatency predictor: MAPE {100 * lat['mape']:.1f}% on {lat['check_archs']} random networks "
          f"(plain LUT sum {100 * lat['lut_sum_mape']:.1f}%); fitted on {lat['fit_archs']}")
    print(f"\nKendall tau vs standalone training ({n_alone} sub-networks):")
    for k, v in taus.items():
        print(f"- {k}: {v:+.3f}")
    print(f"\nTime: `tuili nas` {sum(res.summary['seconds'].values()):.0f} s ({res.summary['seconds']}); "
          f"whole benchmark {time.perf_counter() - t0:.0f} s. Report: {res.report}, Pareto plot: {res.plot}")


if __name__ == "__main__":
    main()
