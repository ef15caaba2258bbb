"""`tuili run` (one inference from .npy/.npz or random inputs), `tuili ops` (supported ops) and
`tuili profile` (per-op times, roofline, memory plan, Chrome trace)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tuili.errors import InvalidInputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an ONNX model once and print or save its outputs",
                       description="Run an ONNX model on inputs from .npy/.npz files or random data.")
    p.add_argument("model", help="path to an .onnx file")
    p.add_argument("-i", "--input", action="append", default=[], metavar="NAME=FILE.npy | FILE.npz",
                   help="input tensor(s); an .npz maps its keys to input names")
    p.add_argument("--random", action="store_true", help="feed random inputs (symbolic dims become --dim values)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of a symbolic dimension for --random (default 1)")
    p.add_argument("--engine", default="tuili", choices=["tuili", "onnxruntime"])
    p.add_argument("-O", "--opt-level", type=int, default=None, choices=range(4),
                   help="graph optimization level 0-3 (default: 2 on tuili, onnxruntime's own default on onnxruntime)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="tuili engine: run Conv/MatMul/Gemm in bf16 (bf16: refused without native bf16; auto: "
                        "bf16 only where the CPU has it)")
    p.add_argument("--compare", nargs="?", const="onnxruntime", default=None, choices=["onnxruntime", "fp32"],
                   help="also run a reference and print the drift (max/mean abs diff, top-1 agreement): "
                        "onnxruntime (the default) or tuili at fp32")
    p.add_argument("-o", "--output", help="save outputs to this .npz")
    p.add_argument("--repeat", type=int, default=1, help="run N times and print the mean latency")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_command)

    p = sub.add_parser("info", help="this machine as the engine sees it: CPU features, math libraries, peers",
                       description="CPU model, cores and ISA features (after TUILI_CPU_MASK), whether bf16 and int8 "
                                   "dot products are native, and the versions and thread counts of the libraries "
                                   "tuili's kernels call (BLAS, numba, torch/oneDNN) and of its peers.")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=info_command)
    p = sub.add_parser("ops", help="list the ops tuili's engine implements")
    p.set_defaults(func=ops_command)
    add_profile_parser(sub)
    p = sub.add_parser("tune", help="choose each node's kernel by measurement at these batch sizes, ahead of serving",
                       description="Where a node can run on numpy or on torch's kernels, time both at the shapes "
                                   "the model runs at and record the faster per CPU and thread count in "
                                   "$TUILI_CACHE_DIR/tuning.json; every later session on this machine uses the "
                                   "choice (runtime.tuning).")
    p.add_argument("model", help="path to an .onnx file")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes to tune for (default 1)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of another symbolic dimension (default 1)")
    p.add_argument("--threads", type=int, default=None, help="threads of the session (default: the free cores)")
    p.set_defaults(func=tune_command)


def tune_command(args: argparse.Namespace) -> int:
    from tuili.errors import ConfigError
    from tuili.runtime.session import InferenceSession

    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise ConfigError(f"--batch must be comma-separated integers, got {args.batch!r}") from None
    if not batches or min(batches) < 1:
        raise ConfigError(f"--batch sizes must be at least 1, got {args.batch!r}")
    if not Path(args.model).is_file():
        raise InvalidInputError(f"model file {args.model!r} does not exist")
    sess = InferenceSession(args.model, threads=args.threads, tune=True)
    for batch in batches:
        sess.run(None, batch_inputs(sess, batch, {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}))
    rows = {}
    assert sess.plan is not None  # the tuili engine always plans
    for step in sess.plan.steps:
        for sig, entry in getattr(step.fn, "measured", {}).items():
            shapes = " ".join("x".join(map(str, s[0])) for s in sig if s is not None)
            times = ", ".join(f"{name} {sec * 1e6:.1f}" for name, sec in sorted(entry["seconds"].items()))
            rows[(step.op_type, shapes)] = f"| {step.op_type} | {shapes} | {times} | {entry['chosen']} |"
    print(f"{args.model}: batch {args.batch}, {len(rows)} distinct node shapes with two kernels")
    print("\n| op | input shapes | microseconds per call | chosen |\n|---|---|---|---|")
    print("\n".join(rows.values()))
    from tuili.runtime.tuning import shared_choices

    print(f"\nrecorded in {shared_choices().path}")
    return 0


def add_profile_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="per-op times, roofline and memory plan of a model on tuili's engine",
                       description="Run a model on random inputs and report each op's time and share, achieved "
                                   "GFLOP/s and GB/s, whether it is memory- or compute-bound against this machine's "
                                   "measured peaks, and the memory plan (arena, lower bound, largest tensors).")
    p.add_argument("model", help="path to an .onnx file")
    p.add_argument("--batch", type=int, default=1, help="size of the inputs' first (batch) dimension (default 1)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of another symbolic dimension (default 1)")
    p.add_argument("--runs", type=int, default=10, help="timed runs (default 10; times are medians)")
    p.add_argument("--threads", type=int, default=None, help="threads of the session (default: the free cores)")
    p.add_argument("-O", "--opt-level", type=int, default=None, choices=range(4),
                   help="graph optimization level 0-3 (default 2)")
    p.add_argument("--top", type=int, default=15, help="ops to list (default 15)")
    p.add_argument("--trace", metavar="TRACE.json", help="write a Chrome trace (Perfetto, chrome://tracing)")
    p.add_argument("--plot", metavar="ROOFLINE.png", help="write a roofline plot")
    p.add_argument("--remeasure-peaks", action="store_true",
                   help="measure the machine's peak GFLOP/s and GB/s again (they are cached per CPU and threads)")
    p.set_defaults(func=profile_command)


def batch_inputs(sess, batch: int, dims: dict[str, int], seed: int = 0) -> dict:
    """Random feeds with every input's first dimension ``batch`` (an error where it is fixed to another)."""
    import numpy as np

    for arg in sess.get_inputs():
        first = (arg.shape or [0])[0]
        if isinstance(first, int) and first != batch and batch != 1:
            raise InvalidInputError(f"input {arg.name!r} has a fixed batch dimension {first}; --batch {batch} "
                                    f"cannot apply (export the model with a dynamic batch)")
        if isinstance(first, str) and first:
            dims.setdefault(first, batch)
    feeds = random_inputs(sess, dims, seed)
    for arg in sess.get_inputs():
        if arg.shape and arg.shape[0] in (None, ""):  # an unnamed dynamic dim: random_inputs made it 1
            feeds[arg.name] = np.repeat(feeds[arg.name], batch, axis=0)
    return feeds


def profile_command(args: argparse.Namespace) -> int:
    from tuili.errors import ConfigError
    from tuili.runtime import roofline
    from tuili.runtime.profile import profile
    from tuili.runtime.session import InferenceSession

    if args.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {args.batch}")
    if args.runs < 1:
        raise ConfigError(f"--runs must be at least 1, got {args.runs}")
    if not Path(args.model).is_file():
        raise InvalidInputError(f"model file {args.model!r} does not exist")
    sess = InferenceSession(args.model, opt_level=args.opt_level, threads=args.threads)
    dims = {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}
    prof = profile(sess, batch_inputs(sess, args.batch, dims), runs=args.runs)
    peaks = roofline.machine_peaks(args.threads, refresh=args.remeasure_peaks)
    costs = roofline.analyse(prof)
    print(f"{args.model}: batch {args.batch}, {len(prof.steps)} steps, {prof.total * 1e3:.2f} ms per run "
          f"(median of {args.runs}, kernel time)")
    print(f"machine peaks ({peaks.key}): {peaks.gflops:.1f} GFLOP/s (float32 GEMM), {peaks.gbytes:.1f} GB/s "
          f"(copy); ridge {peaks.ridge:.1f} FLOP/byte")
    print()
    print(profile_table(costs, peaks, prof.total, args.top))
    print()
    total_flops = sum(c.flops for c in costs)
    print(f"total {total_flops / 1e9:.3f} GFLOP, {total_flops / (prof.total or 1) / 1e9:.1f} GFLOP/s overall")
    print()
    print("by op type:")
    for op, sec in list(prof.by(lambda s: s.op_type).items())[:args.top]:
        print(f"  {op:<24} {sec * 1e3:9.3f} ms {sec / (prof.total or 1):6.1%}")
    mem = prof.memory()
    print()
    print(f"memory plan: {mem.summary()}")
    for name, nbytes in mem.largest(5):
        print(f"  {nbytes / (1 << 20):8.2f} MB  {name}")
    if args.trace:
        prof.write_trace(args.trace)
        print(f"wrote the Chrome trace to {args.trace} (open it in Perfetto or chrome://tracing)")
    if args.plot:
        roofline.plot(costs, peaks, args.plot, title=f"{Path(args.model).name}, batch {args.batch}")
        print(f"wrote the roofline plot to {args.plot}")
    return 0


def profile_table(costs, peaks, total: float, top: int) -> str:
    """Markdown table of the ``top`` slowest steps with their roofline figures."""
    total = total or 1.0
    lines = ["| # | op type | node | ms | share | GFLOP/s | GB/s | FLOP/B | bound | of roof |",
             "|---:|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for c in sorted(costs, key=lambda c: -c.seconds)[:top]:
        s = c.step
        bound = c.bound(peaks) if c.flops else "data"
        lines.append(f"| {s.index} | {s.op_type} | {s.node[-40:] or '-'} | {c.seconds * 1e3:.3f} | "
                     f"{c.seconds / total:.1%} | {c.gflops:.1f} | {c.gbytes:.2f} | {c.intensity:.1f} | {bound} | "
                     f"{c.attained(peaks):.0%} |")
    return "\n".join(lines)


def read_inputs(specs: list[str], input_names: list[str]) -> dict:
    import numpy as np

    feeds = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        if not Path(path).is_file():
            raise InvalidInputError(f"input file {path!r} does not exist")
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            feeds.update({k: data[k] for k in data.files})
        else:
            if not name:
                if len(input_names) != 1:
                    raise InvalidInputError(f"{path}: say which input it is (NAME={path}); the model's inputs "
                                            f"are {input_names}")
                name = input_names[0]
            feeds[name] = data
    return feeds


def random_inputs(sess, dims: dict[str, int], seed: int = 0) -> dict:
    """Random feeds for every input: floats in [0, 1), ints in [0, 10), bools."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in sess.get_inputs():
        if arg.dtype is None:
            raise InvalidInputError(f"input {arg.name!r} is of type {arg.type}: --random makes tensors only")
        shape = [d if isinstance(d, int) else dims.get(d or "", 1) for d in (arg.shape or [])]
        if arg.dtype.kind == "f":
            feeds[arg.name] = rng.random(shape).astype(arg.dtype)
        elif arg.dtype.kind in "iu":
            feeds[arg.name] = rng.integers(0, 10, shape).astype(arg.dtype)
        elif arg.dtype.kind == "b":
            feeds[arg.name] = rng.random(shape) < 0.5
        else:
            raise InvalidInputError(f"input {arg.name!r} has dtype {arg.dtype}: give it with -i")
    return feeds


def run_command(args: argparse.Namespace) -> int:
    import numpy as np

    from tuili.runtime.session import InferenceSession

    t0 = time.perf_counter()
    sess = InferenceSession(args.model, engine=args.engine, opt_level=args.opt_level, precision=args.precision)
    load_ms = (time.perf_counter() - t0) * 1e3
    names = [a.name for a in sess.get_inputs()]
    dims = {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}
    feeds = random_inputs(sess, dims, args.seed) if args.random else {}
    feeds.update(read_inputs(args.input, names))
    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        outputs = sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    out_names = [o.name for o in sess.get_outputs()]
    print(f"{args.model}: loaded in {load_ms:.0f} ms on engine {args.engine}; "
          f"run {1e3 * sorted(times)[len(times) // 2]:.2f} ms (median of {len(times)})")
    if args.engine == "tuili" and args.precision != "fp32":
        nodes = ", ".join(f"{op} {n}" for op, n in sess.bf16_nodes.items()) or "none"
        print(f"precision {sess.precision} ({sess.precision_decision.reason}); bf16 nodes: {nodes}")
    for name, value in zip(out_names, outputs):
        arr = np.asarray(value) if not isinstance(value, list) else value
        if isinstance(arr, np.ndarray):
            summary = f"{arr.dtype}{list(arr.shape)}"
            if arr.dtype.kind in "fiu" and arr.size:
                summary += f" min {arr.min():.4g} max {arr.max():.4g} mean {arr.astype(np.float64).mean():.4g}"
            print(f"  {name}: {summary}")
            if arr.size <= 20:
                print(f"    {np.array2string(arr, precision=5)}")
        else:
            print(f"  {name}: sequence of {len(arr)}")
    if args.compare:
        if args.compare == "onnxruntime":
            ref = InferenceSession(args.model, engine="onnxruntime").run(None, feeds)
        else:
            ref = InferenceSession(args.model, engine=args.engine, opt_level=args.opt_level).run(None, feeds)
        this = "tuili" if sess.precision == "fp32" else f"tuili {sess.precision}"
        for name, a, b in zip(out_names, outputs, ref):
            d = drift(a, b)
            top1 = f", top-1 agreement {d['top1']:.1%}" if d["top1"] is not None else ""
            print(f"  {name}: max |{this} - {args.compare}| = {d['max']:.3g} (relative {d['rel']:.3g}), "
                  f"mean {d['mean']:.3g}{top1}")
    if args.output:
        np.savez(args.output, **dict(zip(out_names, outputs)))
        print(f"saved outputs to {args.output}")
    return 0


def drift(a, b) -> dict:
    """How far output ``a`` is from reference ``b``: max and mean abs diff, max relative to b's largest
    magnitude, and for float outputs of rank >= 2 the share of rows whose argmax (last axis) agrees."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = np.abs(a - b)
    err = float(diff.max()) if diff.size else 0.0
    rel = err / max(float(np.abs(b).max()) if b.size else 1.0, 1e-12)
    top1 = float(np.mean(a.argmax(-1) == b.argmax(-1))) if a.ndim >= 2 and a.size and a.shape[-1] > 1 else None
    return {"max": err, "mean": float(diff.mean()) if diff.size else 0.0, "rel": rel, "top1": top1}


def ops_command(args: argparse.Namespace) -> int:
    from tuili.ops.registry import supported_ops

    for domain, ops in supported_ops().items():
        print(f"{domain} ({len(ops)} ops)")
        line = "  "
        for op, since in ops:
            item = f"{op}-{since} "
            if len(line) + len(item) > 100:
                print(line)
                line = "  "
            line += item
        print(line)
    return 0



def info_command(args: argparse.Namespace) -> int:
    import json

    from tuili.runtime import sysinfo

    facts = sysinfo.collect()
    print(json.dumps(facts, indent=1) if args.json else sysinfo.render(facts))
    return 0
