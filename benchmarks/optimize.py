"""Graph optimizer benchmark: tuili's optimizer beside onnxruntime's, per zoo model.

Node counts: the original export, tuili's ``--target onnx`` (standard ops) and ``--target tuili``
results (level 3), and onnxruntime's own ORT_ENABLE_EXTENDED graph (saved with
optimized_model_filepath). Latency: onnxruntime running tuili's --target onnx output with its own
optimizer off, over onnxruntime ENABLE_ALL on the original (goal: <= 1.05), batch 1, interleaved.

    OPENBLAS_CORETYPE= OPENBLAS_L2_SIZE= .venv/bin/python benchmarks/optimize.py
    .venv/bin/python benchmarks/optimize.py --models resnet18,bert_small --repeat 50
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from tuili import zoo
from tuili.bench.timing import time_interleaved
from tuili.ir import load
from tuili.passes import optimize
from tuili.runtime.cpu import info
from tuili.zoo.core import example_inputs


def _ort(path, level, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _row(name: str, root: Path, args) -> str:
    src = root / f"{name}.onnx"
    zoo.export(name, src)
    original = sum(1 for _ in load(src).all_nodes())
    counts = {}
    for target in ("onnx", "tuili"):
        g = load(src)
        report = optimize(g, 3, allow_custom_ops=target == "tuili")
        counts[target] = sum(report.after.values())
        if target == "onnx":
            g.save(root / f"{name}.tuili-onnx.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(root / f"{name}.ort-extended.onnx")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    ort_nodes = len(onnx.load(so.optimized_model_filepath).graph.node)
    feeds = example_inputs(name, 1)
    ours = _ort(root / f"{name}.tuili-onnx.onnx", ort.GraphOptimizationLevel.ORT_DISABLE_ALL, args.threads)
    theirs = _ort(src, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, args.threads)
    t = time_interleaved({"ours": lambda: ours.run(None, feeds), "theirs": lambda: theirs.run(None, feeds)},
                         warmup=3, repeat=args.repeat, min_repeat=10, budget=args.budget, settle=0.05)
    ratio = t["ours"][0] / t["theirs"][0]
    ok = "yes" if counts["tuili"] <= ort_nodes else "no"
    return (f"| {name} | {counts['onnx']} | {counts['tuili']} | {ort_nodes} | {original} | {ok} | "
            f"{ratio:.2f}x | {t['ours'][0] * 1e3:.2f} / {t['theirs'][0] * 1e3:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(zoo.names()), help="comma-separated zoo names (default: all)")
    ap.add_argument("--repeat", type=int, default=40, help="max timed runs per engine")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per engine after which timing stops")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = ap.parse_args()
    print(f"CPU: {info().describe()}; onnxruntime {ort.__version__}, {args.threads} threads, batch 1\n")
    print("| model | tuili --target onnx | tuili --target tuili | ort extended | original | tuili <= ort | "
          "ort(tuili onnx, opt off) / ort(original, ENABLE_ALL) | ms (ours / theirs) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(_row(name, Path(tmp), args), flush=True)


if __name__ == "__main__":
    main()
