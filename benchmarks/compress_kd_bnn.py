"""Knowledge distillation and binarization on glyphs: size, held-out accuracy, latency; and the
bit-packed binary convolution kernel against float convolution.

Part 1, kernel: one convolution layer (3x3, pad 1, batch 1) as a one-node model, run by tuili as
``tuili::BinaryConv`` (XNOR + popcount on packed uint64) and, on the same shape, as a float ``Conv`` in
tuili and in onnxruntime (2 threads each), interleaved; ratios first.

Part 2, models (fixed seeds; test split = glyph faces never seen in training):
* distillation: glyphs_cnn x2 (teacher) -> glyphs_cnn x1 (student, ~1/4 of the parameters), with
  Hinton soft targets + a FitNets hint on ``features``; the same student trained on labels alone
  (same seed, epochs, recipe) is the baseline;
* binarization: glyphs_cnn x2 float twin -> binarized (all convs but the first, activations too),
  trained from the float weights; exported as Sign + Conv (both engines) and as tuili::BinaryConv (tuili).
Accuracy is measured on the exported ONNX models (onnxruntime); latency at batch 1 and 8.

    .venv/bin/python benchmarks/compress_kd_bnn.py              # full (8 epochs; long on 2 shared cores)
    .venv/bin/python benchmarks/compress_kd_bnn.py --quick      # 2 epochs on 6000 training samples, fewer repeats
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # numba next to OpenBLAS (see DESIGN.md)
os.environ.setdefault("GOTO_THREAD_TIMEOUT", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tuili.bench.timing import time_interleaved  # noqa: E402

SHAPES = [(256, 256, 28), (128, 128, 56), (512, 512, 14)]  # (C_in, C_out, side)


def ort_session(model, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"])


def tuili_session(model, threads: int = 2):
    import tuili

    return tuili.InferenceSession(model if isinstance(model, bytes) else str(model), threads=threads)


def _one_node(node, inits: dict, c: int, side: int, domain: str | None = None) -> bytes:
    g = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, side, side])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(a, k) for k, a in inits.items()])
    ops = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=ops).SerializeToString()


def bench_kernel(args) -> str:
    from tuili.ops.binary import pack_weights

    rng = np.random.default_rng(0)
    rows = []
    for cin, cout, side in SHAPES[:1] if args.quick else SHAPES:
        wb = np.where(rng.random((cout, cin, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
        alpha = (rng.random(cout) + 0.5).astype(np.float32)
        x = np.sign(rng.standard_normal((1, cin, side, side))).astype(np.float32)
        w = wb * alpha[:, None, None, None]
        conv = _one_node(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4), {"w": w}, cin, side)
        bconv = _one_node(helper.make_node("BinaryConv", ["x", "wp", "a"], ["y"], domain="tuili", channels=cin, pads=[1] * 4),
                          {"wp": pack_weights(wb), "a": alpha}, cin, side, "tuili")
        sess = {"binary (tuili)": tuili_session(bconv), "float (tuili)": tuili_session(conv), "float (onnxruntime)": ort_session(conv)}
        outs = {k: s.run(None, {"x": x})[0] for k, s in sess.items()}
        assert np.allclose(outs["binary (tuili)"], outs["float (onnxruntime)"], rtol=1e-4, atol=1e-2), "binary conv differs"
        res = time_interleaved({k: (lambda s=s, x=x: s.run(None, {"x": x})) for k, s in sess.items()}, warmup=3,
                               repeat=20 if args.quick else 60, min_repeat=10, budget=1.0 if args.quick else 3.0, settle=0.05)
        t = {k: v[0] * 1e3 for k, v in res.items()}
        b = t["binary (tuili)"]
        rows.append(f"| {cin}->{cout}, {side}x{side} | **{t['float (tuili)'] / b:.1f}x** | **{t['float (onnxruntime)'] / b:.1f}x** "
                    f"| {b:.2f} | {t['float (tuili)']:.2f} | {t['float (onnxruntime)']:.2f} | {cin * cout * 9 * 4 / 1e6:.2f} -> "
                    f"{cout * 9 * -(-cin // 64) * 8 / 1e6:.3f} |")
    head = ["| 3x3 conv, pad 1, batch 1 | binary vs tuili float | binary vs onnxruntime float | binary ms | tuili float ms "
            "| onnxruntime ms | weight MB float -> packed |", "|---|---:|---:|---:|---:|---:|---|"]
    return "\n".join(head + rows)


def accuracy(path, x, y, engine: str = "onnxruntime") -> float:
    s = (ort_session if engine == "onnxruntime" else tuili_session)(path)
    pred = np.concatenate([s.run(None, {"input": x[i:i + 512]})[0].argmax(1) for i in range(0, len(x), 512)])
    return float((pred == y).mean())


def latency(path, x, engines, args) -> dict:
    out = {}
    for batch in (1, 8):
        feeds = {"input": np.ascontiguousarray(x[:batch])}
        sess = {e: (ort_session if e == "onnxruntime" else tuili_session)(path) for e in engines}
        res = time_interleaved({e: (lambda s=s, f=feeds: s.run(None, f)) for e, s in sess.items()}, warmup=3,
                               repeat=30 if args.quick else 100, min_repeat=10, budget=0.5 if args.quick else 2.0, settle=0.05)
        for e in engines:
            out[(e, batch)] = res[e][0] * 1e3 if isinstance(res[e], tuple) else float("nan")
    return out


def params_of(path) -> int:
    return int(sum(np.prod(t.dims) for t in onnx.load(str(path)).graph.initializer))


def row(label, path, ds, engines, args, **extra) -> dict:
    r = dict(model=label, params=params_of(path), bytes=Path(path).stat().st_size, acc=accuracy(path, ds.x_test, ds.y_test, engines[0]),
             lat=latency(path, ds.x_test, engines, args), engines=engines)
    r.update(extra)
    return r


def table(rows: list[dict]) -> str:
    lines = ["| model | params | ONNX bytes | test acc | onnxruntime b1 / b8 ms | tuili b1 / b8 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cell = {e: (f"{r['lat'][(e, 1)]:.3f} / {r['lat'][(e, 8)]:.3f}" if e in r["engines"] else "n/a (tuili op)")
                for e in ("onnxruntime", "tuili")}
        lines.append(f"| {r['model']} | {r['params']:,} | {r['bytes']:,} | {100 * r['acc']:.2f}% | {cell['onnxruntime']} "
                     f"| {cell['tuili']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        acc = 100 * r["acc"]
        a.scatter(r["bytes"] / 1e3, acc)
        a.annotate(r["model"], (r["bytes"] / 1e3, acc), fontsize=7)
        e = "tuili" if "tuili" in r["engines"] else "onnxruntime"
        b.scatter(r["lat"][(e, 1)], acc)
        b.annotate(f"{r['model']} [{e}]", (r["lat"][(e, 1)], acc), fontsize=7)
    a.set(xscale="log", xlabel="ONNX file size (kB, log)", ylabel="test accuracy (%)", title="accuracy vs size")
    b.set(xlabel="latency, batch 1 (ms)", ylabel="test accuracy (%)", title="accuracy vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 epochs on 6000 training samples, fewer timing repeats")
    p.add_argument("--epochs", type=int, help="training epochs (default 8; --quick 2)")
    p.add_argument("--skip-models", action="store_true", help="kernel micro-benchmark only")
    p.add_argument("--out", type=Path, help="directory for the models and the plot (default: a temporary one)")
    args = p.parse_args(argv)
    from tuili.runtime.cpu import info

    print(f"CPU: {info().describe()}\n")
    print("## tuili::BinaryConv vs float Conv (same shape, ratios = float time / binary time)\n")
    print(bench_kernel(args), "\n", flush=True)
    if args.skip_models:
        return 0
    from tuili.compress.binary import binarize_zoo
    from tuili.compress.distill import distill_zoo, subset
    from tuili.zoo.training import glyphs_data

    out = args.out or Path(tempfile.mkdtemp(prefix="kd_bnn_"))
    epochs = args.epochs or (2 if args.quick else 8)
    ds = glyphs_data()
    train_ds = subset(ds, train=6000) if args.quick else ds
    kd = distill_zoo("glyphs_cnn", "glyphs_cnn", teacher_width=2.0, student_width=1.0, data=train_ds, epochs=epochs,
                     out_dir=out / "kd")
    bnn = binarize_zoo("glyphs_cnn", width=2.0, data=train_ds, epochs=epochs, out_dir=out / "bnn")
    both = ("onnxruntime", "tuili")
    rows = [row("teacher glyphs_cnn x2", kd.teacher_onnx, ds, both, args),
            row("student x1, labels only", kd.baseline_onnx, ds, both, args),
            row("student x1, distilled", kd.onnx_path, ds, both, args),
            row("float twin glyphs_cnn x2", bnn.float_onnx, ds, both, args),
            row("binary x2 (Sign + Conv)", bnn.onnx_path, ds, both, args),
            row("binary x2 (tuili::BinaryConv)", bnn.tuili_onnx, ds, ("tuili",), args)]
    print(f"## Distillation and binarization on glyphs ({epochs} epochs{', 6000 training samples' if args.quick else ''}; "
          "test = unseen faces)\n")
    print(table(rows), "\n")
    t, b, s = (rows[i]["acc"] * 100 for i in range(3))
    print(f"distilled student: {rows[2]['params'] / rows[0]['params']:.2f} of the teacher's parameters, {s - t:+.2f} pt vs "
          f"teacher (goal >= -1.5), {s - b:+.2f} pt vs labels only (goal >= +1)")
    print(f"binarized: {100 * (rows[4]['acc'] - rows[3]['acc']):+.2f} pt vs float twin (goal >= -5..-8); "
          f"file {rows[3]['bytes'] / rows[5]['bytes']:.1f}x smaller as tuili::BinaryConv")
    png = out / "compress_kd_bnn.png"
    plot(rows, png)
    print(f"\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
