"""`tuili zoo ...`: list, export, info, train. torch is imported inside the handlers only."""
from __future__ import annotations

import argparse

from tuili.zoo.training import DATASETS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("zoo", help="model zoo: list, export, inspect and train small CNNs / Transformers",
                              description="tuili's model zoo: small CNNs and Transformers in plain torch, faithful to their papers.")
    sub = p.add_subparsers(dest="zoo_verb", metavar="SUBVERB", required=True)

    ls = sub.add_parser("list", help="table of models: task, params, MACs, input shape")
    ls.add_argument("--measure", action="store_true", help="also export each model and time onnxruntime at batch 1")
    ls.add_argument("--only", default=None, help="comma-separated model names to show")
    ls.add_argument("--runs", type=int, default=20, help="timed runs per model with --measure (median is shown)")
    ls.set_defaults(func=cmd_list)

    ex = sub.add_parser("export", help="export a model to ONNX (named inputs/outputs, dynamic batch)")
    ex.add_argument("name")
    ex.add_argument("-o", "--output", required=True, help="output .onnx file")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    ex.add_argument("--resolution", type=int, default=None, help="input side in pixels (image models)")
    ex.add_argument("--width", type=float, default=None, help="width multiplier (where the paper defines one)")
    ex.add_argument("--seq-len", type=int, default=None, help="sequence length used for tracing (text models; the axis stays dynamic)")
    ex.add_argument("--num-classes", type=int, default=None)
    ex.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ex.add_argument("--keep-batchnorm", action="store_true", help="keep BatchNormalization nodes (default: folded into Conv)")
    ex.set_defaults(func=cmd_export)

    info = sub.add_parser("info", help="layer table of a model (output shapes, params, MACs)")
    info.add_argument("name")
    info.add_argument("--resolution", type=int, default=None)
    info.add_argument("--width", type=float, default=None)
    info.add_argument("--seq-len", type=int, default=None)
    info.set_defaults(func=cmd_info)

    tr = sub.add_parser("train", help="train a CNN on real data (digits, glyphs); prints test accuracy, saves checkpoint + ONNX")
    tr.add_argument("name")
    tr.add_argument("--data", default=None, choices=list(DATASETS),
                    help="training data (default: the model's own, e.g. glyphs for glyphs_cnn; else digits)")
    tr.add_argument("--epochs", type=int, default=None)
    tr.add_argument("-o", "--output-dir", default="zoo_runs")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resolution", type=int, default=None, help="input side (default: the model's minimum)")
    tr.add_argument("--width", type=float, default=None)
    tr.set_defaults(func=cmd_train)


def _fmt(n, unit=1e6, digits=2):
    return "-" if n is None else f"{n / unit:.{digits}f}"


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _console():
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=140)  # piped: don't squeeze tables to 80 columns


def cmd_list(args) -> int:
    from rich.table import Table

    from tuili.zoo import list_models
    from tuili.zoo.registry import get_spec

    specs = [get_spec(n) for n in args.only.split(",")] if args.only else list_models()
    t = Table(title="tuili model zoo" + (" (onnxruntime, batch 1, this machine)" if args.measure else ""))
    for col, just in (("name", "left"), ("task", "left"), ("params M", "right"), ("paper", "right"),
                      ("MACs M", "right"), ("paper", "right"), ("input", "left")):
        t.add_column(col, justify=just, no_wrap=col in ("name", "input"))
    if args.measure:
        t.add_column("ORT ms", justify="right")
    latencies = _measure(specs, args.runs) if args.measure else {}
    for s in specs:
        if s.is_text:
            inp = f"N x {s.default_seq_len} tokens" + (" + KV" if s.task == "text-generation" else "")
        else:
            inp = f"N x {s.in_channels}x{s.default_resolution}x{s.default_resolution}"
        task = {"image-classification": "image cls", "text-encoding": "text enc", "text-generation": "text gen"}.get(s.task, s.task)
        row = [s.name, task, _fmt(s.params), _fmt(s.paper_params), _fmt(s.macs, 1e6, 1), _fmt(s.paper_macs, 1e6, 0), inp]
        if args.measure:
            row.append(latencies.get(s.name, "-"))
        t.add_row(*row)
    _console().print(t)
    return 0


def _measure(specs, runs: int) -> dict[str, str]:
    import statistics
    import tempfile
    import time
    from pathlib import Path

    import onnxruntime as ort
    from rich.progress import track

    from tuili.zoo import example_inputs, export

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for s in track(specs, description="export + time"):
            path = export(s.name, Path(d) / f"{s.name}.onnx", batch="dynamic")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feeds = example_inputs(s.name, 1, past_len=0) if s.task == "text-generation" else example_inputs(s.name, 1)
            sess.run(None, feeds)
            times = []
            for _ in range(max(1, runs)):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times.append(time.perf_counter() - t0)
            out[s.name] = f"{statistics.median(times) * 1e3:.2f}"
            path.unlink()
    return out


def cmd_export(args) -> int:
    from tuili.zoo import export, get_spec

    spec = get_spec(args.name)
    path = export(args.name, args.output, opset=args.opset, batch=args.batch, resolution=args.resolution, width=args.width,
                  seq_len=args.seq_len, num_classes=args.num_classes, seed=args.seed, keep_batchnorm=args.keep_batchnorm)
    ins = ", ".join(spec.inputs) if len(spec.inputs) <= 3 else f"input_ids + {len(spec.inputs) - 1} past key/values"
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {args.opset}, batch {args.batch}); inputs: {ins}; "
          f"outputs: {', '.join(spec.outputs[:3])}{' ...' if len(spec.outputs) > 3 else ''}")
    return 0


def cmd_info(args) -> int:
    from rich.table import Table

    from tuili.zoo import count, get_spec, layer_table

    spec = get_spec(args.name)
    rows = layer_table(args.name, width=args.width, resolution=args.resolution, seq_len=args.seq_len)
    params, macs = count(args.name, width=args.width, resolution=args.resolution, seq_len=args.seq_len)
    t = Table(title=f"{spec.name} — {spec.paper}", caption=spec.convention or None)
    for col in ("#", "layer", "type", "output", "params", "MACs"):
        t.add_column(col, justify="right" if col in ("#", "params", "MACs") else "left")
    for i, r in enumerate(rows):
        t.add_row(str(i), r["name"], r["type"], _shape(r["output"]) if r["output"] != "" else "", f"{r['params']:,}", f"{r['macs']:,}")
    t.add_section()
    hidden = macs - sum(r["macs"] for r in rows)
    if hidden:  # attention matmuls, a tied LM head: functional ops outside any leaf module
        t.add_row("", "(functional ops)", "matmul", "", "", f"{hidden:,}")
    t.add_row("", "total", "", "", f"{params:,}", f"{macs:,}")
    _console().print(t)
    return 0


def cmd_train(args) -> int:
    from tuili.zoo import train

    r = train(args.name, data=args.data, epochs=args.epochs, out_dir=args.output_dir, seed=args.seed, progress=True,
              resolution=args.resolution, width=args.width)
    val = f", validation {r.val_accuracy * 100:.2f}%" if r.val_accuracy is not None else ""
    print(f"{args.name}: test accuracy {r.accuracy * 100:.2f}%{val} on {r.data} after {r.epochs} epochs ({r.seconds:.1f}s) "
          f"at {r.resolution}x{r.resolution}")
    print(f"checkpoint: {r.checkpoint}\nonnx:       {r.onnx_path}")
    return 0


__all__ = ["add_parser", "argparse"]
