"""`tuili optimize in.onnx -o out.onnx [-O 0..3] [--report] [--target tuili|onnx]`."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("optimize", help="run tuili's graph optimizer on an ONNX model",
                       description="Optimize an ONNX graph (folding, fusion, elimination) and save the result. "
                                   "Fused ops live in domains 'tuili' and 'com.microsoft' and run on tuili's "
                                   "engine; --target onnx keeps standard ONNX ops only (the result runs in "
                                   "onnxruntime).")
    p.add_argument("model", help="path to an .onnx file")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized .onnx")
    p.add_argument("-O", "--level", type=int, default=2, choices=[0, 1, 2, 3], help="optimization level (default 2)")
    p.add_argument("--report", action="store_true", help="print a before/after table of op counts and the passes")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target", choices=["tuili", "onnx"],
                        help="engine the output is for: tuili (default; fused tuili/com.microsoft ops) or onnx "
                             "(standard ops only: runs on any ONNX engine, e.g. onnxruntime)")
    target.add_argument("--portable", dest="target", action="store_const", const="onnx", help="same as --target onnx")
    p.set_defaults(func=optimize_command)


def optimize_command(args: argparse.Namespace) -> int:
    from tuili.ir import load
    from tuili.passes import optimize

    graph = load(args.model)
    report = optimize(graph, args.level, allow_custom_ops=args.target != "onnx")  # infers shapes when passes need them
    graph.save(args.output)
    if args.report:
        print_report(report, args.model, args.output)
    else:
        print(f"{args.output}: {report.summary()}")
    return 0


def print_report(report, src: str, dst: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ops = Table(title=f"op counts: {src} -> {dst} ({report.name})")
    ops.add_column("op")
    ops.add_column("before", justify="right")
    ops.add_column("after", justify="right")
    ops.add_column("change", justify="right")
    for op in sorted(set(report.before) | set(report.after), key=lambda k: (-report.before.get(k, 0), k)):
        b, a = report.before.get(op, 0), report.after.get(op, 0)
        ops.add_row(op, str(b), str(a), f"{a - b:+d}" if a != b else "")
    b, a = sum(report.before.values()), sum(report.after.values())
    ops.add_row("[bold]total", f"[bold]{b}", f"[bold]{a}", f"[bold]{a - b:+d}")
    console.print(ops)
    passes = Table(title=f"passes ({report.rounds} rounds to a fixed point, {report.seconds * 1e3:.1f} ms)")
    passes.add_column("pass")
    passes.add_column("runs", justify="right")
    passes.add_column("changed", justify="right")
    passes.add_column("what changed")
    passes.add_column("ms", justify="right")
    for name, e in report.by_pass().items():
        delta = ", ".join(f"{k} {v:+d}" for k, v in sorted(e["delta"].items()))
        passes.add_row(name, str(e["runs"]), str(e["changed"]), delta or ("op counts unchanged" if e["changed"] else "-"),
                       f"{e['seconds'] * 1e3:.1f}")
    console.print(passes)
