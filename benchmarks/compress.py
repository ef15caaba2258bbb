"""Compression report: one row per technique and setting on a zoo CNN trained here on glyphs.

Each row: parameters (and nonzero ones), bytes on disk, compressed bytes (zlib -9 of the file: what
sparse zeros buy in a gzip'd download; a .tdc file is already entropy-coded), top-1 on the glyphs
TEST split (never used for training, fine-tuning, calibration or selection: fine-tuning uses the
train split only), and batch-1 / batch-32 latency in onnxruntime and tuili's engine, every model
and engine taking turns (tuili.bench.timing) so machine load hits them alike. The fp32 baseline is
trained once (cached under ``$TUILI_CACHE_DIR/bench_compress``) and measured in the same run.

    PYTHONPATH=src .venv/bin/python benchmarks/compress.py --quick            # minutes: short fine-tunes
    PYTHONPATH=src .venv/bin/python benchmarks/compress.py --plot compress.png # the full report

Techniques are functions ``rows_<name>(ctx) -> list[Row]`` registered in TECHNIQUES; another
technique (distillation, binarization) adds its function there and gets its rows in the table and plot.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from tuili.bench.timing import time_interleaved

log = logging.getLogger("benchmarks.compress")


@dataclasses.dataclass
class Row:
    technique: str
    variant: str
    onnx: Path  # the model that runs (a .tdc row: its decoded ONNX)
    accuracy: float
    params: int
    nonzero: int
    disk_bytes: int  # the file a user ships (.onnx, or .tdc)
    compressed_bytes: int
    latency: dict = dataclasses.field(default_factory=dict)  # (engine, batch) -> seconds
    note: str = ""


@dataclasses.dataclass
class Context:
    name: str
    model: object  # the trained fp32 torch module (never modified)
    data: object  # TrainData
    out: Path
    quick: bool
    seed: int = 0

    def epochs(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    @property
    def example(self):
        import torch

        return torch.from_numpy(self.data.x_test[:2])


def onnx_row(ctx: Context, technique: str, variant: str, model, note: str = "") -> Row:
    """Export ``model`` and measure its size and test accuracy (onnxruntime)."""
    from tuili.compress.train import export_onnx

    path = export_onnx(copy.deepcopy(model), ctx.out / f"{technique}-{variant}.onnx".replace(" ", "_"), ctx.example)
    return file_row(ctx, technique, variant, path, path, note)


def file_row(ctx: Context, technique: str, variant: str, shipped: Path, runnable: Path, note: str = "") -> Row:
    import onnx
    from onnx import numpy_helper

    from tuili.compress.train import onnx_accuracy

    ws = [numpy_helper.to_array(t) for t in onnx.load(str(runnable)).graph.initializer]
    data = shipped.read_bytes()
    return Row(technique, variant, runnable, onnx_accuracy(runnable, ctx.data), sum(w.size for w in ws),
               sum(int(np.count_nonzero(w)) for w in ws), len(data), len(zlib.compress(data, 9)), note=note)


# ------------------------------------------------------------------------------------------ techniques


def rows_baseline(ctx: Context) -> list[Row]:
    return [onnx_row(ctx, "fp32", "baseline", ctx.model)]


def rows_unstructured(ctx: Context) -> list[Row]:
    """Zhu & Gupta's gradual pruning inside one training run (16 mask updates along the cubic schedule
    over the first half, the second half at the target), the dense model distilling into its pruned copy."""
    from tuili.compress.prune import prune_unstructured

    rows = []
    for s in ((0.8,) if ctx.quick else (0.8, 0.9)):
        r = prune_unstructured(ctx.model, s, scope="global", schedule="gradual", steps=8 if ctx.quick else 16,
                               data=ctx.data, epochs=ctx.epochs(2, 0.25), final_epochs=ctx.epochs(2, 0.25),
                               distill=True, seed=ctx.seed)
        st = r.storage()
        rows.append(onnx_row(ctx, "unstructured", f"{100 * s:.0f}% global gradual + KD", r.model,
                             note=f"weights dense {st['dense']:,} B, CSR {st['csr']:,} B, bitmask {st['bitmask']:,} B"))
    return rows


def rows_structured(ctx: Context) -> list[Row]:
    from tuili.compress.prune import bn_l1_regularizer, prune_channels
    from tuili.compress.train import fine_tune

    rows = []
    for criterion in (("l1",) if ctx.quick else ("l1", "bn", "taylor")):
        base = ctx.model
        if criterion == "bn":  # network slimming: sparsity training on the BN scales first
            base = copy.deepcopy(ctx.model)
            fine_tune(base, ctx.data, ctx.epochs(1, 0.25), regularizer=bn_l1_regularizer(1e-4), seed=ctx.seed,
                      desc="slimming (L1 on BN gammas)")
        # cut, re-estimate BatchNorm statistics, fine-tune with the unpruned model as teacher
        r = prune_channels(base, ctx.example, flops_target=0.5, criterion=criterion, data=ctx.data,
                           epochs=ctx.epochs(3, 0.5), distill=True, seed=ctx.seed)
        rows.append(onnx_row(ctx, "structured", f"{criterion}, FLOPs {100 * r.flops[1] / r.flops[0]:.0f}% + KD", r.model,
                             note=f"channel ratio {r.ratio:.2f}; unsupported: {len(r.unsupported)}"))
    return rows


def rows_deep(ctx: Context) -> list[Row]:
    """Prune globally to a sparsity the model keeps its accuracy at (gradual + KD), then 16 shared
    weights per layer with distilled centroid fine-tuning; Huffman coding makes up the rest of 20x."""
    from tuili.compress.deep import deep_compress

    tdc = ctx.out / "deep.tdc"
    s = DEEP_SPARSITY
    r = deep_compress(ctx.model, ctx.data, tdc, sparsity=s, scope="global", steps=8 if ctx.quick else 16,
                      prune_epochs=ctx.epochs(4, 0.5), share_epochs=ctx.epochs(1, 0.25), bits={"conv": 4, "fc": 4},
                      distill=True, seed=ctx.seed)
    log.info("Deep Compression stages:\n%s\n%s", r.table(), r.report.table())
    ctx.deep_tables = (r.table(), r.report.table())  # printed after the main table
    return [file_row(ctx, "deep compression", f"{100 * s:.0f}% + 16 clusters + Huffman + KD (.tdc)", tdc, r.onnx_path,
                     note=f"{r.report.ratio:.1f}x smaller than the fp32 ONNX")]


DEEP_SPARSITY = 0.85  # glyphs_cnn / resnet8_glyphs: 4-bit shared weights + Huffman reach ~20x from here


TECHNIQUES = {"baseline": rows_baseline, "unstructured": rows_unstructured, "structured": rows_structured,
              "deep": rows_deep}


# ------------------------------------------------------------------------------------------ measure, report


def measure_latency(rows: list[Row], batches=(1, 32), repeat: int = 200, budget: float = 2.0) -> None:
    from tuili.runtime.session import InferenceSession

    rng = np.random.default_rng(0)
    for b in batches:
        fns = {}
        for i, row in enumerate(rows):
            x = rng.random((b, *row_input_shape(row)), np.float32)
            for engine in ("onnxruntime", "tuili"):
                sess = InferenceSession(str(row.onnx), engine=engine)
                fns[(i, engine)] = (lambda s=sess, x=x: s.run(None, {"input": x}))
        res = time_interleaved(fns, warmup=5, repeat=repeat, min_repeat=20, budget=budget, settle=0.02)
        for (i, engine), v in res.items():
            rows[i].latency[(engine, b)] = v[0] if isinstance(v, tuple) else float("nan")


def row_input_shape(row: Row) -> tuple:
    import onnx

    dims = onnx.load(str(row.onnx)).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims[1:])


def table(rows: list[Row]) -> str:
    base = rows[0]
    keys = sorted({k for r in rows for k in r.latency}, key=lambda k: (k[1], k[0]))
    head = ["technique", "variant", "params", "nonzero", "disk B", "zlib B", "smaller", "top-1 %", "drop pt"]
    head += [f"{'ort' if e == 'onnxruntime' else e} b{b} ms" for e, b in keys]
    head += [f"{'ort' if e == 'onnxruntime' else e} b{b} speedup" for e, b in keys if e == "onnxruntime"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.technique, r.variant, f"{r.params:,}", f"{r.nonzero:,}", f"{r.disk_bytes:,}", f"{r.compressed_bytes:,}",
                 f"{base.disk_bytes / r.disk_bytes:.1f}x", f"{100 * r.accuracy:.2f}", f"{100 * (base.accuracy - r.accuracy):+.2f}"]
        cells += [f"{1e3 * r.latency[k]:.3f}" for k in keys]
        cells += [f"{base.latency[k] / r.latency[k]:.2f}x" for k in keys if k[0] == "onnxruntime"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {r.technique} / {r.variant}: {r.note}" for r in rows if r.note]]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, batch: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    techniques = list(dict.fromkeys(r.technique for r in rows))
    for t, marker in zip(techniques, "o^sDvP*Xh"):
        rs = [r for r in rows if r.technique == t]
        acc = [100 * r.accuracy for r in rs]
        axes[0].scatter([r.disk_bytes / 1024 for r in rs], acc, marker=marker, label=t, s=50)
        axes[1].scatter([1e3 * r.latency.get(("onnxruntime", batch), np.nan) for r in rs], acc, marker=marker, label=t, s=50)
        for r, a in zip(rs, acc):
            axes[0].annotate(r.variant, (r.disk_bytes / 1024, a), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xscale="log", xlabel="bytes on disk (KiB, log)", ylabel="test top-1 %", title="accuracy vs size")
    axes[1].set(xlabel=f"onnxruntime latency, batch {batch} (ms)", ylabel="test top-1 %", title="accuracy vs latency")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trained(name: str, epochs: int | None, seed: int):
    """The trained fp32 torch module and its data set (training cached by name, epochs and seed)."""
    from tuili import zoo
    from tuili.data import cache_dir

    out = cache_dir() / "bench_compress" / f"{name}-e{epochs or 'default'}-s{seed}"
    ckpt = out / f"{name}.pt"
    if not ckpt.exists():
        zoo.train(name, "glyphs", epochs=epochs, out_dir=out, seed=seed)
    return zoo.load_checkpoint(ckpt), zoo.glyphs_data(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet8_glyphs", help="a glyphs zoo model (glyphs_cnn, resnet8_glyphs)")
    p.add_argument("--techniques", default=",".join(TECHNIQUES), help=f"comma-separated: {', '.join(TECHNIQUES)}")
    p.add_argument("--quick", action="store_true", help="short fine-tunes (fractions of an epoch): minutes, not an hour")
    p.add_argument("--train-epochs", type=int, help="baseline training epochs (default: the zoo's; cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=200, help="max timed runs per model, engine and batch")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timing per model, engine and batch")
    p.add_argument("--plot", type=Path, help="write the accuracy-vs-size / accuracy-vs-latency PNG here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    wanted = [t.strip() for t in args.techniques.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TECHNIQUES]
    if unknown:
        p.error(f"unknown technique(s) {', '.join(unknown)}; known: {', '.join(TECHNIQUES)}")
    if "baseline" not in wanted:
        wanted.insert(0, "baseline")
    model, data = trained(args.model, args.train_epochs, args.seed)
    with tempfile.TemporaryDirectory(prefix="tuili-bench-compress-") as tmp:
        ctx = Context(args.model, model, data, Path(tmp), args.quick, args.seed)
        rows: list[Row] = []
        for t in wanted:
            log.info("technique %s", t)
            rows += TECHNIQUES[t](ctx)
        measure_latency(rows, repeat=args.repeat, budget=args.budget)
        print(f"## Compression on {args.model} (glyphs test split, {len(data.y_test):,} images; "
              f"{'--quick' if args.quick else 'full'} run)\n")
        print(table(rows))
        for extra in getattr(ctx, "deep_tables", ()):
            print("\n" + extra)
        if args.plot:
            plot(rows, args.plot)
            print(f"\nwrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
