"""Precision benchmark: tuili fp32, bf16 and int8 beside onnxruntime fp32 and int8 and OpenVINO (its
default precision, bf16 on a CPU with native bf16, and f32), with each engine's output drift.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/precision.py
    .venv/bin/python benchmarks/precision.py --cases resnet50:1,resnet50:8 --threads 2 --repeat 20

Every engine runs the same zoo ONNX export on the same inputs (``zoo.example_inputs``), timed in
alternating blocks (``tuili.bench.timing.time_interleaved``) so a change of machine load hits all
alike; the figures are medians. Ratios come first (tuili bf16 to OpenVINO's default, tuili to
onnxruntime), then latencies, then drift: each engine's first output against onnxruntime fp32, as
the largest abs difference relative to the reference's largest magnitude, and the share of rows
whose top-1 (argmax over the last axis) agrees. On a CPU without native bf16, tuili bf16 is
refused (the table says why) and ``auto`` is fp32. OpenVINO is optional: without it its columns
are left out.

int8 (``--no-int8`` skips it): the model quantized by ``tuili quantize``'s defaults (static QDQ,
calibrated on ``zoo.example_inputs`` batches other than the timed one), run by tuili (oneDNN int8
kernels where ``runtime.int8`` enables them, else the float path; the notes say which) and by
onnxruntime; the int8 drift is against onnxruntime fp32 on the float model, like the others.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from tuili.bench.timing import time_interleaved

DEFAULT_CASES = "resnet50:1,resnet50:8,mobilenet_v2:8,bert_small:8"
ENGINES = ("tuili fp32", "tuili bf16", "tuili int8", "onnxruntime fp32", "onnxruntime int8", "openvino default",
           "openvino f32")


def _drift(out: np.ndarray, ref: np.ndarray) -> str:
    from tuili.runtime.cli import drift

    d = drift(out, ref)
    top1 = f", top-1 {d['top1']:.0%}" if d["top1"] is not None else ""
    return f"{d['rel']:.2g}{top1}"


def _openvino(path: Path, feeds: dict, threads: int, precision: str | None):
    """A callable running OpenVINO on ``feeds`` (shapes fixed to theirs), returning its first output."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({name: list(v.shape) for name, v in feeds.items()})
    config: dict = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    ov_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run():
        request.infer(feeds)
        return request.get_output_tensor(0).data

    return run, ov_precision


def bench_case(name: str, batch: int, args, workdir: Path) -> dict:
    import onnxruntime as ort

    import tuili.zoo as zoo
    from tuili.errors import ConfigError
    from tuili.runtime.session import InferenceSession

    path = workdir / f"{name}.onnx"
    if not path.exists():
        zoo.export(name, path)
    feeds = zoo.example_inputs(name, batch=batch)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    ort_sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ref = ort_sess.run(None, feeds)[0]
    fns: dict = {"onnxruntime fp32": lambda: ort_sess.run(None, feeds)[0]}
    row: dict = {"model": name, "batch": batch, "notes": []}
    for precision in ("fp32", "bf16"):
        try:
            sess = InferenceSession(str(path), threads=args.threads, precision=precision)
        except ConfigError as e:
            row["notes"].append(f"tuili bf16 refused: {e}")
            continue
        if precision == "bf16":
            row["notes"].append("tuili bf16 nodes: " + ", ".join(f"{op} {n}" for op, n in sess.bf16_nodes.items()))
        fns[f"tuili {precision}"] = partial(lambda s: s.run(None, feeds)[0], sess)
    if not args.no_int8:
        qpath = _quantized(name, path, workdir)
        ort_q = ort.InferenceSession(str(qpath), so, providers=["CPUExecutionProvider"])
        fns["onnxruntime int8"] = lambda: ort_q.run(None, feeds)[0]
        sess = InferenceSession(str(qpath), threads=args.threads)
        nodes = ", ".join(f"{op} {n}" for op, n in sess.int8_nodes.items()) or "none"
        row["notes"].append(f"tuili int8: {sess.int8_decision.reason}; oneDNN int8 nodes: {nodes}")
        fns["tuili int8"] = partial(lambda s: s.run(None, feeds)[0], sess)
    if not args.no_openvino:
        try:
            for label, hint in (("openvino default", None), ("openvino f32", "f32")):
                fns[label], ran = _openvino(path, feeds, args.threads, hint)
                row["notes"].append(f"{label} ran {ran}")
        except ImportError:
            row["notes"].append("openvino not installed")
    for label, fn in fns.items():
        row[f"drift {label}"] = _drift(fn(), ref)
    timed = time_interleaved(fns, warmup=args.warmup, repeat=args.repeat, min_repeat=args.min_repeat,
                             budget=args.budget, settle=args.settle)
    for label, t in timed.items():
        row[label] = t[0] * 1e3 if isinstance(t, tuple) else t
    return row


def _quantized(name: str, path: Path, workdir: Path) -> Path:
    """``path`` quantized with tuili quantize's defaults, calibrated on 4 example batches of 8 (seeds 1-4)."""
    import tuili.zoo as zoo
    from tuili.compress.quant import quantize_static

    out = workdir / f"{name}.int8.onnx"
    if not out.exists():
        batches = [zoo.example_inputs(name, batch=8, seed=s) for s in range(1, 5)]
        quantize_static(path, out, {k: np.concatenate([b[k] for b in batches]) for k in batches[0]})
    return out


def _ratio(row: dict, a: str, b: str) -> str:
    x, y = row.get(a), row.get(b)
    return f"{x / y:.2f}x" if isinstance(x, float) and isinstance(y, float) else "-"


def render(rows: list[dict]) -> str:
    engines = [e for e in ENGINES if any(e in r for r in rows)]
    ratios = [("tuili bf16", "openvino default"), ("tuili bf16", "tuili fp32"), ("tuili fp32", "onnxruntime fp32"),
              ("tuili bf16", "onnxruntime fp32"), ("openvino default", "onnxruntime fp32"),
              ("tuili int8", "tuili fp32"), ("tuili int8", "onnxruntime int8")]
    head = ["model", "batch"] + [f"{a} / {b}" for a, b in ratios] + [f"{e} ms" for e in engines] + [
        f"drift {e}" for e in engines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["batch"])] + [_ratio(r, a, b) for a, b in ratios]
        cells += [f"{r[e]:.1f}" if isinstance(r.get(e), float) else str(r.get(e, "-")) for e in engines]
        cells += [r.get(f"drift {e}", "-") for e in engines]
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({n for r in rows for n in r["notes"]})
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help="model:batch,... (zoo models)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--min-repeat", type=int, default=5)
    p.add_argument("--budget", type=float, default=5.0, help="seconds per engine per case")
    p.add_argument("--settle", type=float, default=0.2)
    p.add_argument("--no-openvino", action="store_true")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 (tuili quantize QDQ) columns")
    args = p.parse_args(argv)

    from tuili.runtime import cpu, int8, precision

    print(f"CPU: {cpu.info().describe()}")
    auto = precision.decide("auto")
    print(f"precision auto -> {auto.precision} ({auto.reason}); int8: {int8.decide().reason}; "
          f"{args.threads} threads\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            name, _, batch = case.partition(":")
            rows.append(bench_case(name, int(batch or 1), args, Path(tmp)))
            print(f"done {case}", file=sys.stderr, flush=True)
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
