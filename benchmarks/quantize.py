"""Quantization benchmark: tuili's static QDQ beside onnxruntime.quantization.quantize_static.

Both quantizers get the same model and the same calibration data and write QDQ models with
per-channel int8 weights and uint8 activations (7-bit weights where the CPU has no VNNI/AMX, for
both). The trained CNNs (digits_cnn, glyphs_cnn, trained here by tuili.zoo.train and cached under
``$TUILI_CACHE_DIR/bench_quantize``) calibrate on their TRAIN split and report top-1 accuracy on
their TEST split, never used for calibration. The untrained zoo models (ResNet-18, MobileNetV2:
random weights, so no task metric) report the SNR of their logits against fp32 on random-normal
inputs (calibration on other random-normal inputs). Latency is the median of onnxruntime runs at
batch 1 and 8, int8 and fp32 taking turns (``benchmarks/engine.py``'s interleaved timing).

    .venv/bin/python benchmarks/quantize.py                          # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/quantize.py --models digits_cnn --methods entropy,mse,minmax
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import time_interleaved  # noqa: E402 - the shared interleaved timer

DEFAULT_MODELS = ["digits_cnn", "glyphs_cnn", "resnet18", "mobilenet_v2"]
TRAINED = {"digits_cnn", "glyphs_cnn"}


def trained_model(name: str) -> tuple[Path, object]:
    """(fp32 ONNX, TrainData) of a zoo CNN trained here; the training is cached."""
    from tuili import zoo
    from tuili.data import cache_dir

    out = cache_dir() / "bench_quantize"
    path = out / f"{name}.onnx"
    data = zoo.digits_data(name) if name == "digits_cnn" else zoo.glyphs_data(name)
    if not path.exists():
        zoo.train(name, out_dir=out, progress=True)
    return path, data


def logits(path, x, batch: int = 256) -> np.ndarray:
    sess = session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def snr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - out).astype(np.float64) ** 2).sum()))


def session(path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_quantize(src, dst, calib: dict, batch: int, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.it = iter([{k: v[i:i + batch] for k, v in calib.items()} for i in range(0, n, batch)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)


def latency(paths: dict[str, Path], feeds: dict, threads: int, repeat: int, budget: float) -> dict[str, float]:
    sessions = {k: session(p, threads) for k, p in paths.items()}
    fns = {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}
    res = time_interleaved(fns, warmup=3, repeat=repeat, min_repeat=10, budget=budget, settle=0.05)
    return {k: v[0] if isinstance(v, tuple) else float("nan") for k, v in res.items()}


def bench_model(name: str, args, tmp: Path) -> list[dict]:
    from tuili import zoo
    from tuili.compress.quant import quantize_static
    from tuili.compress.quant.ptq import default_reduce_range

    rng = np.random.default_rng(0)
    (inp, example), = zoo.example_inputs(name, batch=1).items()
    shape = example.shape
    if name in TRAINED:
        src, data = trained_model(name)
        idx = rng.permutation(len(data.x_train))[:args.calib_samples]
        calib = {inp: data.x_train[np.sort(idx)]}
        evalx, labels = data.x_test, data.y_test
    else:  # random weights: no task metric, SNR on random-normal inputs other than the calibration ones
        src = zoo.export(name, tmp / f"{name}.onnx")
        calib = {inp: rng.standard_normal((args.random_samples, *shape[1:])).astype(np.float32)}
        evalx, labels = np.random.default_rng(1).standard_normal((64, *shape[1:])).astype(np.float32), None
    ref = logits(src, evalx)

    def score(p) -> tuple[float | None, float]:
        out = ref if p == src else logits(p, evalx)
        acc = 100 * float((out.argmax(1) == labels).mean()) if labels is not None else None
        return acc, (float("inf") if p == src else snr(ref, out))
    reduce_range = default_reduce_range()
    variants = {"fp32": Path(src)}
    for method in args.methods:
        out = tmp / f"{name}.tuili-{method}.onnx"
        quantize_static(src, out, calib, method=method, batch_size=args.calib_batch, reduce_range=reduce_range)
        variants[f"tuili {method}"] = out
    out = tmp / f"{name}.ort.onnx"
    ort_quantize(src, out, calib, args.calib_batch, reduce_range)
    variants["onnxruntime minmax"] = out
    rows = {k: {"model": name, "quantizer": k, "size": os.path.getsize(p) / 1e6, "score": score(p)}
            for k, p in variants.items()}
    for b in args.batch:
        feeds = {inp: np.random.default_rng(2).standard_normal((b, *shape[1:])).astype(np.float32)}
        t = latency(variants, feeds, args.threads, args.repeat, args.budget)
        for k in variants:
            rows[k][f"b{b}"] = t[k] * 1e3
            rows[k][f"r{b}"] = t[k] / t["fp32"]
    return list(rows.values())


def table(rows: list[dict], batches: list[int]) -> str:
    head = ["model", "quantizer", "size MB", "top-1 %", "drop pt", "SNR dB"]
    for b in batches:
        head += [f"b{b} ms", f"b{b} / fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    base: dict[str, float] = {}
    for r in rows:
        acc, db = r["score"]
        if r["quantizer"] == "fp32":
            base[r["model"]] = acc
        top1 = "n/a (untrained)" if acc is None else f"{acc:.2f}"
        drop = "" if acc is None or r["quantizer"] == "fp32" else f"{base[r['model']] - acc:.2f}"
        cells = [r["model"], r["quantizer"], f"{r['size']:.2f}", top1, drop, "" if db == float("inf") else f"{db:.1f}"]
        for b in batches:
            cells += [f"{r[f'b{b}']:.2f}", f"{r[f'r{b}']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--methods", default="entropy,mse,percentile,minmax", help="tuili calibration methods to run")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--calib-samples", type=int, default=1024, help="train-split samples for the trained CNNs")
    ap.add_argument("--random-samples", type=int, default=64, help="random-normal calibration samples (untrained)")
    ap.add_argument("--calib-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per variant and batch")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.batch = [int(b) for b in args.batch.split(",")]
    import onnxruntime

    from tuili.compress.quant.ptq import default_reduce_range
    from tuili.runtime.cpu import info

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            rows += bench_model(name, args, Path(d))
    print(f"CPU: {info().describe()}; onnxruntime {onnxruntime.__version__}, {args.threads} threads; "
          f"weights {'7-bit (reduce_range)' if default_reduce_range() else '8-bit'}; {_dt.date.today()}")
    print(f"command: python benchmarks/quantize.py {shlex.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print()
    print(table(rows, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
