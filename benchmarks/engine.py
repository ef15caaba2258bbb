"""Engine benchmark: tuili beside onnxruntime, torch eager and onnx's reference evaluator.

For each zoo model and batch size, every engine runs the same ONNX file (torch runs the zoo's
torch module with the same weights), and the script prints one markdown table: ratios first, then
median latencies in ms, then how far tuili's outputs are from onnxruntime's.

    .venv/bin/python benchmarks/engine.py                                # default set, batch 1 and 8
    .venv/bin/python benchmarks/engine.py --models resnet18,bert_small --batch 1 --repeat 20
    .venv/bin/python benchmarks/engine.py --profile resnet18,bert_small  # where tuili's time goes

Timing: each engine runs ``--warmup`` untimed calls, then the engines take turns in blocks of 5
calls (tuili x5, onnxruntime x5, torch x5, tuili x5, ...; a ``--settle`` pause before each switch
so the previous engine's spinning threads are idle) for up to ``--repeat`` calls, stopping early
once ``--budget`` seconds per engine have been spent in that cell (at least ``--min-repeat`` calls
always run). The reported number is each engine's median. Taking turns
means a change of machine load hits every engine alike, so the ratios stay meaningful on a
shared machine even when the absolute times do not. onnx's ReferenceEvaluator runs only at batch 1,
in a child process with a ``--ref-timeout`` deadline; a cell that does not finish in time shows
"skipped (too slow)".

Peak RSS (``--rss``, on by default) is each engine's session, built and run 3 times in a fresh
process, minus that process's RSS before. ``--busy`` models are timed again with one more
CPU-bound process on the machine: the busy/quiet factor shows how each engine degrades under
contention.

``--profile`` times each step of tuili's plan (``tuili.runtime.profile``, through the executor's
step hook) and sums by op type; onnxruntime's own per-node profile
(``SessionOptions.enable_profiling``) is summed the same way beside it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from tuili.bench.timing import time_calls, time_interleaved

DEFAULT_MODELS = ["resnet18", "mobilenet_v2", "resnet50", "bert_small", "squeezenet1_1",
                  "shufflenet_v2_x1_0", "efficientnet_lite0", "gpt_small"]
ENGINES = ("tuili", "onnxruntime", "torch", "reference")


def _reference_child(path: str, feeds: dict, repeat: int, budget: float, limit: float, conn) -> None:
    """Runs in a child process: build the ReferenceEvaluator and time it; send (median, n) back.
    The first run is the warm-up; more runs follow only while they fit in ``budget`` seconds."""
    try:
        from onnx.reference import ReferenceEvaluator

        sess = ReferenceEvaluator(path)
        t0 = time.perf_counter()
        sess.run(None, feeds)
        first = time.perf_counter() - t0
        if first > limit:
            conn.send(("slow", first, 0))
            return
        times: list[float] = []
        start = time.perf_counter()
        last = first
        while len(times) < repeat and time.perf_counter() - start + last <= budget:
            t0 = time.perf_counter()
            sess.run(None, feeds)
            last = time.perf_counter() - t0
            times.append(last)
        conn.send(("ok", statistics.median(times) if times else first, len(times)))
    except Exception as e:  # noqa: BLE001 - reported in the table, the benchmark goes on
        conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}", 0))
    finally:
        conn.close()


def time_reference(path: str, feeds: dict, repeat: int, budget: float, limit: float):
    """(median seconds, n) or a string saying why there is no number. A cell whose first run
    needs more than ``limit`` seconds is abandoned (the child process is killed)."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_reference_child, args=(path, feeds, repeat, budget, limit, send), daemon=True)
    proc.start()
    send.close()
    # limit for the first run + budget for the timed runs + slack for loading the model
    if recv.poll(limit + budget + 10):
        try:
            status, value, n = recv.recv()
        except EOFError:
            status, value, n = "error", "child died", 0
        proc.join(5)
        if status == "ok":
            return value, n
        if status == "slow":
            return "skipped (too slow)"
        return f"error ({value})"
    proc.kill()
    proc.join()
    return "skipped (too slow)"


# ------------------------------------------------------------------------------ machine facts
def machine_facts(threads: int | None, opt_level: int) -> str:
    import onnx
    import onnxruntime
    import threadpoolctl
    import torch

    from tuili.runtime import cpu

    blas = []
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas":
            blas.append(f"{info.get('internal_api')} {info.get('version')} "
                        f"({info.get('architecture', '?')}, {info.get('num_threads')} threads, "
                        f"{Path(info.get('filepath', '')).name})")
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                      "OMP_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT") if k in os.environ}
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:  # read-only git queries: which code was measured
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        code = f"git {sha or '?'}" + (" + uncommitted changes under src/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        code = "git ?"
    lines = [
        f"- tuili: {code}; InferenceSession opt_level={opt_level}",
        f"- machine: {cpu.info().describe()}; load average at start {load}",
        f"- python {platform.python_version()}, numpy {np.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"- BLAS (threadpoolctl): {'; '.join(blas) or 'none found'}",
        f"- threads: {threads if threads else 'library defaults'}; BLAS env: {env or 'none set'}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- engines
def _max_abs_diff(a: list, b: list) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst


def bench_model(name: str, batches: list[int], args, workdir: Path, log) -> list[dict]:
    import onnxruntime as ort
    import torch

    import tuili
    import tuili.zoo as zoo

    path = workdir / f"{name}.onnx"
    t0 = time.perf_counter()
    zoo.export(name, path)
    module = zoo.create(name)
    log(f"{name}: exported in {time.perf_counter() - t0:.1f}s")
    so = ort.SessionOptions()
    if args.threads:
        so.intra_op_num_threads = args.threads
    ort_sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    t_sess = tuili.InferenceSession(str(path), threads=args.threads, opt_level=args.opt_level)
    rows = []
    for batch in batches:
        feeds = zoo.example_inputs(name, batch=batch)
        row: dict = {"model": name, "batch": batch}
        timing = dict(warmup=args.warmup, repeat=args.repeat, min_repeat=args.min_repeat, budget=args.budget)

        ref_out = ort_sess.run(None, feeds)
        fns = {}
        try:
            ours = t_sess.run(None, feeds)
            row["diff"] = _max_abs_diff(ours, ref_out)
            fns["tuili"] = partial(t_sess.run, None, feeds)
        except Exception as e:  # noqa: BLE001 - one failing model must not end the benchmark
            row["tuili"] = f"error ({type(e).__name__})"
            log(f"{name} b{batch}: tuili failed: {type(e).__name__}: {e}")
        fns["onnxruntime"] = partial(ort_sess.run, None, feeds)
        if "torch" in args.engines:
            targs = tuple(torch.from_numpy(v) for v in feeds.values())

            def run_torch(targs=targs):
                with torch.inference_mode():
                    return module(*targs)
            fns["torch"] = run_torch
        row.update(time_interleaved(fns, settle=args.settle, **timing))

        if "reference" in args.engines and batch in args.ref_batch:
            row["reference"] = time_reference(str(path), feeds, args.repeat, args.budget, args.ref_timeout)
        else:
            row["reference"] = "not run"
        if args.rss:
            for e in ("tuili", "onnxruntime"):
                row[f"rss {e}"] = peak_rss_mb(e, str(path), name, batch, args.threads)
        log(f"{name} b{batch}: " + ", ".join(f"{e}={_fmt_ms(row.get(e))}" for e in ENGINES)
            + f", diff={row.get('diff', float('nan')):.2e}")
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- output
def _ms(v) -> float | None:
    return v[0] * 1e3 if isinstance(v, tuple) else None


def _fmt_ms(v) -> str:
    if isinstance(v, tuple):
        ms = v[0] * 1e3
        return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"
    return "-" if v is None else str(v)


def _ratio(a, b) -> str:
    x, y = _ms(a), _ms(b)
    return f"{x / y:.2f}x" if x is not None and y else "-"


def table(rows: list[dict], engines: tuple[str, ...]) -> str:
    cols = ["model", "batch", "tuili/ort", "tuili/torch"] + [f"{e} ms" for e in engines if e != "reference"]
    if "reference" in engines:
        cols.append("reference ms")
    rss = any("rss tuili" in r for r in rows)
    if rss:
        cols += ["peak RSS MB tuili / ort"]
    cols += ["max abs diff tuili vs ort"]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < 1 else "---:" for i in range(len(cols))) + "|"]
    for r in rows:
        cells = [r["model"], str(r["batch"]), _ratio(r.get("tuili"), r.get("onnxruntime")),
                 _ratio(r.get("tuili"), r.get("torch"))]
        cells += [_fmt_ms(r.get(e)) for e in engines if e != "reference"]
        if "reference" in engines:
            cells.append(_fmt_ms(r.get("reference")))
        if rss:
            a, b = r.get("rss tuili"), r.get("rss onnxruntime")
            cells.append(" / ".join(f"{v:.0f}" if isinstance(v, float) else str(v or "-") for v in (a, b)))
        cells.append(f"{r['diff']:.1e}" if "diff" in r else "-")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(rows: list[dict]) -> str:
    lines = []
    for e in ("onnxruntime", "torch"):
        ratios = [_ms(r.get("tuili")) / _ms(r.get(e)) for r in rows
                  if _ms(r.get("tuili")) is not None and _ms(r.get(e))]
        if ratios:
            geo = float(np.exp(np.mean(np.log(ratios))))
            lines.append(f"- geometric mean tuili/{e}: {geo:.2f}x over {len(ratios)} cells "
                         f"(best {min(ratios):.2f}x, worst {max(ratios):.2f}x)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- peak memory
def _rss_child(engine: str, path: str, name: str, batch: int, threads, conn) -> None:
    """Runs in a fresh process: peak RSS growth (MB) from building ``engine``'s session and running it."""
    try:
        import onnxruntime as ort
        import torch  # noqa: F401 - imported before the baseline, as both engines' processes would

        import tuili
        import tuili.zoo as zoo

        feeds = zoo.example_inputs(name, batch=batch)
        base = _status_kb("VmRSS")
        if engine == "tuili":
            sess = tuili.InferenceSession(path, threads=threads)
        else:
            so = ort.SessionOptions()
            if threads:
                so.intra_op_num_threads = threads
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, feeds)
        conn.send((_status_kb("VmHWM") - base) / 1024)
    except Exception as e:  # noqa: BLE001 - reported in the table
        conn.send(f"error ({type(e).__name__})")
    finally:
        conn.close()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_mb(engine: str, path: str, name: str, batch: int, threads) -> float | str:
    """Peak RSS growth of one session (load + 3 runs) in a fresh process, in MB."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_rss_child, args=(engine, path, name, batch, threads, send), daemon=True)
    proc.start()
    send.close()
    value = recv.recv() if recv.poll(600) else "timeout"
    proc.join(10)
    return value


# ------------------------------------------------------------------------ quiet vs busy machine
def busy_slowdown(models: list[str], batch: int, args, workdir: Path, log) -> str:
    """Each engine's latency with the machine as it is, then with one more CPU-bound process
    (``python -c "while True: pass"``, ended by its pid); the factor busy/quiet per engine."""
    import subprocess

    import onnxruntime as ort

    import tuili
    import tuili.zoo as zoo

    timing = dict(warmup=args.warmup, repeat=args.repeat, min_repeat=args.min_repeat, budget=args.budget,
                  settle=args.settle)
    lines = ["| model | batch | tuili busy/quiet | onnxruntime busy/quiet | tuili quiet ms | tuili busy ms | "
             "ort quiet ms | ort busy ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in models:
        path = workdir / f"{name}.onnx"
        if not path.exists():
            zoo.export(name, path)
        feeds = zoo.example_inputs(name, batch=batch)
        so = ort.SessionOptions()
        if args.threads:
            so.intra_op_num_threads = args.threads
        osess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        tsess = tuili.InferenceSession(str(path), threads=args.threads, opt_level=args.opt_level)
        fns = {"tuili": partial(tsess.run, None, feeds), "onnxruntime": partial(osess.run, None, feeds)}
        quiet = time_interleaved(fns, **timing)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            busy = time_interleaved(fns, **timing)
        finally:
            hog.kill()
            hog.wait()
        log(f"busy/quiet {name} b{batch}: tuili {_fmt_ms(quiet['tuili'])} -> {_fmt_ms(busy['tuili'])}, "
            f"onnxruntime {_fmt_ms(quiet['onnxruntime'])} -> {_fmt_ms(busy['onnxruntime'])}")
        lines.append(f"| {name} | {batch} | {_ratio(busy['tuili'], quiet['tuili'])} | "
                     f"{_ratio(busy['onnxruntime'], quiet['onnxruntime'])} | {_fmt_ms(quiet['tuili'])} | "
                     f"{_fmt_ms(busy['tuili'])} | {_fmt_ms(quiet['onnxruntime'])} | {_fmt_ms(busy['onnxruntime'])} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ profile
def op_label(op: str, shapes: list) -> str:
    """A finer name for the ops that dominate: Conv by kernel kind, MatMul by what it multiplies.
    ``shapes`` are the input shapes (None where unknown). The same rules run on both engines' ops."""
    if op in ("Conv", "FusedConv") and len(shapes) >= 2 and shapes[0] is not None and shapes[1] is not None:
        x, w = shapes[0], shapes[1]
        k = "x".join(str(d) for d in w[2:])
        group = x[1] // w[1] if w[1] else 1
        if group > 1 and group == x[1] and w[0] == x[1]:
            return f"Conv depthwise {k}"
        return f"Conv {k}" + (f" (group {group})" if group > 1 else "")
    if op in ("MatMul", "FusedMatMul") and len(shapes) == 1:
        return "MatMul, 2-D B (weights)"  # onnxruntime lists no shape for a pre-packed weight B
    if op in ("MatMul", "FusedMatMul") and len(shapes) >= 2 and shapes[1] is not None:
        # B of rank 2 is a weight matrix (projections, FFN); a batched B is activations (attention)
        return "MatMul, 2-D B (weights)" if len(shapes[1]) == 2 else "MatMul, batched B (attention)"
    if op == "FusedGemm":
        return "Gemm"
    return op


def profile_tuili(sess, feeds: dict, rounds: int) -> dict[str, float]:
    """Seconds per op label (summed over steps, median over ``rounds`` runs after one warm-up),
    from tuili.runtime.profile."""
    from tuili.runtime.profile import profile

    prof = profile(sess, feeds, runs=rounds)
    return prof.by(lambda s: op_label(s.op_type, list(s.input_shapes)))


def profile_ort(path: str, feeds: dict, rounds: int, threads: int | None, workdir: Path) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / "ort_profile")
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)  # warm-up
    for _ in range(rounds):
        sess.run(None, feeds)
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    runs = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events
                  if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    warm_end = runs[0][1] if len(runs) > 1 else float("-inf")  # drop the warm-up run's nodes
    acc: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time") and ev["ts"] > warm_end:
            a = ev.get("args", {})
            op = a.get("op_name", "?")
            shapes = [next(iter(d.values()), None) if isinstance(d, dict) else None
                      for d in a.get("input_type_shape", [])]
            key = op_label(op, shapes)
            acc[key] = acc.get(key, 0.0) + ev["dur"] * 1e-6
    n = max(len(runs) - 1, 1)  # mean per run over the timed runs
    return {op: t / n for op, t in acc.items()}


def profile_table(name: str, batch: int, tuili_ops: dict, ort_ops: dict, total_tuili: float, total_ort: float,
                  top: int) -> str:
    st, so_ = sum(tuili_ops.values()), sum(ort_ops.values())
    ops = sorted(tuili_ops, key=tuili_ops.get, reverse=True)
    shown = ops[:top]
    rest = [o for o in ops[top:]]
    lines = [f"**{name}, batch {batch}** — tuili run {total_tuili * 1e3:.1f} ms (kernels {st * 1e3:.1f} ms), "
             f"onnxruntime run {total_ort * 1e3:.1f} ms (kernels {so_ * 1e3:.1f} ms)", "",
             "| op type | tuili ms | tuili share | ort ms (its op types) | ort share | tuili/ort |",
             "|---|---:|---:|---:|---:|---:|"]

    def ort_for(op: str) -> float | None:
        # Conv/MatMul rows are already keyed alike on both sides (op_label folds onnxruntime's
        # FusedConv / FusedMatMul / FusedGemm into them); Relu and other fused-away ops have no row.
        return ort_ops.get(op)

    for op in shown:
        t = tuili_ops[op]
        o = ort_for(op)
        lines.append(f"| {op} | {t * 1e3:.2f} | {t / st:.0%} | {'-' if o is None else f'{o * 1e3:.2f}'} | "
                     f"{'-' if o is None else f'{o / so_:.0%}'} | {'-' if not o else f'{t / o:.1f}x'} |")
    if rest:
        t = sum(tuili_ops[o] for o in rest)
        lines.append(f"| other ({len(rest)} types) | {t * 1e3:.2f} | {t / st:.0%} | | | |")
    covered = set(shown)
    ort_only = {k: v for k, v in ort_ops.items() if k not in covered and k not in tuili_ops}
    if ort_only:
        lines.append("")
        lines.append("op types only onnxruntime runs (its fusions) or not shown above: " + ", ".join(
            f"{k} {v * 1e3:.2f} ms" for k, v in sorted(ort_only.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def run_profile(models: list[str], batch: int, args, workdir: Path, log) -> str:
    import onnxruntime as ort

    import tuili
    import tuili.zoo as zoo

    parts = []
    timing = dict(warmup=args.warmup, repeat=args.repeat, min_repeat=args.min_repeat, budget=args.budget)
    for name in models:
        path = workdir / f"{name}.onnx"
        if not path.exists():
            zoo.export(name, path)
        feeds = zoo.example_inputs(name, batch=batch)
        sess = tuili.InferenceSession(str(path), threads=args.threads, opt_level=args.opt_level)
        so = ort.SessionOptions()
        if args.threads:
            so.intra_op_num_threads = args.threads
        osess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        total_t = time_calls(partial(sess.run, None, feeds), **timing)[0]
        total_o = time_calls(partial(osess.run, None, feeds), **timing)[0]
        t_ops = profile_tuili(sess, feeds, args.profile_rounds)  # the session limits BLAS to --threads
        o_ops = profile_ort(str(path), feeds, args.profile_rounds, args.threads, workdir)
        log(f"profiled {name} b{batch}")
        parts.append(profile_table(name, batch, t_ops, o_ops, total_t, total_o, args.top))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated zoo names (default: %(default)s; unknown names are skipped)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=20, help="max timed runs per cell (default: %(default)s)")
    p.add_argument("--min-repeat", type=int, default=3, help="min timed runs per cell (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per cell (default: %(default)s)")
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds per cell after which timing stops (default: %(default)s)")
    p.add_argument("--settle", type=float, default=0.5,
                   help="seconds of sleep before switching engine, so spinning thread pools go idle (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every engine (default: each library's own default)")
    p.add_argument("--opt-level", type=int, default=2, help="tuili graph optimization level 0..3 (default: %(default)s)")
    p.add_argument("--engines", default=",".join(ENGINES), help="subset of %(default)s (tuili and onnxruntime always run)")
    p.add_argument("--ref-batch", default="1", help="batch sizes the reference evaluator runs at (default: %(default)s)")
    p.add_argument("--ref-timeout", type=float, default=20.0,
                   help="seconds the reference evaluator may take per cell before it is skipped (default: %(default)s)")
    p.add_argument("--profile", default="", help="comma-separated models to profile per op type (instead of the table)")
    p.add_argument("--profile-batch", type=int, default=1)
    p.add_argument("--profile-rounds", type=int, default=10)
    p.add_argument("--top", type=int, default=8, help="op types shown per profiled model")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True,
                   help="peak RSS of each engine's session per cell, in a fresh process (default: on)")
    p.add_argument("--busy", default="resnet18,mobilenet_v2",
                   help="models timed with and without a competing CPU-bound process, at batch 1 "
                        "('' to skip; default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    args.engines = tuple(e for e in ENGINES if e in args.engines.split(",") or e in ("tuili", "onnxruntime"))
    args.ref_batch = [int(b) for b in args.ref_batch.split(",") if b]

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    import torch

    import tuili.zoo as zoo

    if args.threads:
        torch.set_num_threads(args.threads)
    known = set(zoo.names())
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    print(f"tuili engine benchmark, {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    print(f"- command: `{command}`")
    print(machine_facts(args.threads, args.opt_level))
    print()
    with tempfile.TemporaryDirectory(prefix="tuili-bench-") as tmp:
        work = Path(tmp)
        if args.profile:
            models = [m for m in args.profile.split(",") if m]
            print(run_profile([m for m in models if m in known], args.profile_batch, args, work, log))
        else:
            models = [m for m in args.models.split(",") if m]
            missing = [m for m in models if m not in known]
            if missing:
                print(f"- not in the zoo, skipped: {', '.join(missing)}")
            batches = [int(b) for b in args.batch.split(",") if b]
            print(f"- timing: {args.warmup} warm-up runs, then median of up to {args.repeat} runs "
                  f"(at least {args.min_repeat}, stop after {args.budget:g} s per engine and cell), engines interleaved in blocks of 5 runs with {args.settle:g} s pauses; reference evaluator "
                  f"at batch {','.join(map(str, args.ref_batch))} only, skipped if a cell needs > {args.ref_timeout:g} s")
            print("- ratios < 1 mean tuili is faster; all numbers in the same process and run\n")
            rows: list[dict] = []
            for m in models:
                if m not in known:
                    continue
                try:
                    rows += bench_model(m, batches, args, work, log)
                except Exception as e:  # noqa: BLE001 - report and go on with the next model
                    log(f"{m}: failed: {type(e).__name__}: {e}")
                    rows.append({"model": m, "batch": "-", "tuili": f"error ({type(e).__name__})"})
            print(table(rows, args.engines))
            print()
            print(summary(rows))
            busy = [m for m in args.busy.split(",") if m in known]
            if busy:
                print("\nSlowdown with one competing CPU-bound process (busy/quiet latency, same engines "
                      "interleaved; goal: tuili <= onnxruntime's + 50%):\n")
                print(busy_slowdown(busy, 1, args, work, log))
    print(f"\n(wall time {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
