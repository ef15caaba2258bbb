"""Serving benchmark (issue 4): ResNet-18 on the onnxruntime backend behind `tuili serve`.

Throughput and p50/p99 latency at concurrency 1, 4, 16, over HTTP and gRPC, with dynamic
batching on and off, beside the same onnxruntime model called in-process at its best batch
size (the upper limit a server can reach on this machine). Prints one markdown table.

    .venv/bin/python benchmarks/serve.py                 # ~3-4 minutes
    .venv/bin/python benchmarks/serve.py --seconds 5 --concurrency 1 16 --protocols http

The load generator runs in this process (asyncio, the official tritonclient aio clients), on
the same cores as the server, as Triton's perf_analyzer would on a one-machine setup.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from tuili.bench.server import start_server, stop_server

SPIN = ""  # set from --allow-spinning
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "model_repository", "resnet18", "1", "model.onnx")

CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch}
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{spin}
{batching}
"""


def resnet18_onnx(workdir: str) -> str:
    if os.path.exists(EXAMPLE):
        return EXAMPLE
    from tuili import zoo

    path = os.path.join(workdir, "resnet18.onnx")
    zoo.export("resnet18", path)
    return path


def build_repo(workdir: str, model: str, max_batch: int, instances: int, preferred: int = 0) -> str:
    repo = os.path.join(workdir, "repo")
    pref = f"preferred_batch_size: [ {preferred} ] " if 1 < preferred < max_batch else ""
    for name, batching in (("resnet18_batching", f"dynamic_batching {{ {pref}max_queue_delay_microseconds: 0 }}"), ("resnet18_plain", "")):
        os.makedirs(os.path.join(repo, name, "1"), exist_ok=True)
        dst = os.path.join(repo, name, "1", "model.onnx")
        if not os.path.exists(dst):
            try:
                os.symlink(model, dst)
            except OSError:
                shutil.copyfile(model, dst)
        with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
            spin = f'parameters {{ key: "allow_spinning" value: {{ string_value: "{SPIN}" }} }}' if SPIN else ""
            f.write(CONFIG.format(name=name, max_batch=max_batch, instances=instances, batching=batching, spin=spin))
    return repo


def in_process_limit(model: str, seconds: float, batches=(1, 2, 4, 8, 16)) -> tuple[int, float, dict]:
    """Best throughput (inferences/s) of onnxruntime called directly, over batch sizes."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    results = {}
    for b in batches:
        x = np.random.rand(b, 3, 224, 224).astype(np.float32)
        for _ in range(2):
            sess.run(None, {"input": x})
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            sess.run(None, {"input": x})
            n += b
        results[b] = n / (time.perf_counter() - t0)
    best = max(results, key=results.get)
    return best, results[best], results


async def load(protocol: str, url: str, model: str, concurrency: int, seconds: float, warmup: float) -> dict:
    x = np.random.rand(1, 3, 224, 224).astype(np.float32)
    if protocol == "http":
        import tritonclient.http.aio as tc

        client = tc.InferenceServerClient(url, conn_limit=max(concurrency, 1))
    else:
        import tritonclient.grpc.aio as tc

        client = tc.InferenceServerClient(url)
    inp = tc.InferInput("input", [1, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(x)
    outs = [tc.InferRequestedOutput("logits")]
    lat: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds

    async def worker():
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                await client.infer(model, [inp], outputs=outs)
            except Exception:
                errors += 1
                continue
            t1 = time.perf_counter()
            if t0 >= t_measure and t1 <= t_end:
                lat.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    lat_ms = np.array(lat) * 1000
    return {
        "throughput": len(lat) / seconds,
        "p50": float(np.percentile(lat_ms, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat_ms, 99)) if len(lat) else float("nan"),
        "errors": errors,
    }


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_unload_growth(model: str, workdir: str, cycles: int) -> tuple[float, float, float]:
    """Repeated load/unload of ResNet-18 (a Triton pain point): server RSS after the first cycle and after the last."""
    import tritonclient.http as th

    repo = build_repo(os.path.join(workdir, "lu"), model, 16, 1)
    lu_dir = os.path.join(workdir, "lu")
    proc, ports = start_server(repo, lu_dir, ["--model-control-mode", "explicit"])
    try:
        c = th.InferenceServerClient(f"127.0.0.1:{ports['http']}")
        x = np.random.rand(1, 3, 224, 224).astype(np.float32)
        inp = th.InferInput("input", [1, 3, 224, 224], "FP32")
        inp.set_data_from_numpy(x)
        start = rss_mb(proc.pid)
        first = None
        for i in range(cycles):
            c.load_model("resnet18_batching")
            c.infer("resnet18_batching", [inp])
            c.unload_model("resnet18_batching")
            if i == 0:
                first = rss_mb(proc.pid)
        last = rss_mb(proc.pid)
        c.close()
    finally:
        stop_server(proc)
    return start, first, last


def server_stats(http_port: int, model: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/stats", timeout=30) as r:
        st = json.load(r)["model_stats"][0]
    s = st["inference_stats"]
    return {"n": s["success"]["count"], "req_ns": s["success"]["ns"], "queue_ns": s["queue"]["ns"],
            "infer_ns": s["compute_infer"]["ns"], "execs": st["execution_count"], "inferences": st["inference_count"]}


def stats_delta(a: dict, b: dict) -> dict:
    n = max(1, b["n"] - a["n"])
    return {
        "avg_batch": (b["inferences"] - a["inferences"]) / max(1, b["execs"] - a["execs"]),
        "server_ms": (b["req_ns"] - a["req_ns"]) / n / 1e6,
        "queue_ms": (b["queue_ns"] - a["queue_ns"]) / n / 1e6,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    p.add_argument("--max-batch", type=int, default=16, help="max_batch_size of the served models")
    p.add_argument("--preferred", type=int, default=0,
                   help="preferred_batch_size of the batching model (default: the best in-process batch size, as a tuned config would use)")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--allow-spinning", choices=["0", "1"], default=None,
                   help="onnxruntime intra-op thread spinning in the served models (default: the backend default, off)")
    p.add_argument("--load-unload", type=int, default=20, help="load/unload cycles for the memory-growth check (0 = skip)")
    args = p.parse_args(argv)
    global SPIN
    SPIN = args.allow_spinning or ""

    workdir = tempfile.mkdtemp(prefix="tuili-bench-serve-")
    model = resnet18_onnx(workdir)
    print(f"measuring the in-process limit (onnxruntime, {os.cpu_count()} cores) ...", file=sys.stderr)
    best_b, limit, per_batch = in_process_limit(model, max(2.0, args.seconds / 2))
    max_batch = args.max_batch
    preferred = args.preferred or best_b
    repo = build_repo(workdir, model, max_batch, args.instances, preferred)
    proc, ports = start_server(repo, workdir)
    rows = []
    try:
        for protocol in args.protocols:
            url = f"127.0.0.1:{ports['http'] if protocol == 'http' else ports['grpc']}"
            for batching, name in (("on", "resnet18_batching"), ("off", "resnet18_plain")):
                for c in args.concurrency:
                    print(f"{protocol} batching {batching} concurrency {c} ...", file=sys.stderr)
                    before = server_stats(ports["http"], name)
                    r = asyncio.run(load(protocol, url, name, c, args.seconds, args.warmup))
                    r.update(stats_delta(before, server_stats(ports["http"], name)))
                    rows.append((protocol, batching, c, r))
    finally:
        stop_server(proc)
    growth = None
    try:
        if args.load_unload > 0:
            print(f"load/unload x{args.load_unload} ...", file=sys.stderr)
            growth = load_unload_growth(model, workdir, args.load_unload)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    from tuili.runtime import cpu

    print(f"\n### tuili serve: ResNet-18, onnxruntime backend, {cpu.info().describe()}, "
          f"{args.instances} instance(s), max_batch_size {max_batch}, preferred_batch_size {preferred if 1 < preferred < max_batch else '-'}\n")
    print("In-process onnxruntime (no server): " + ", ".join(f"batch {b}: {v:.1f}/s" for b, v in per_batch.items())
          + f" -> limit {limit:.1f} inferences/s at batch {best_b}\n")
    print("| protocol | dynamic batching | concurrency | throughput (infer/s) | p50 (ms) | p99 (ms) | vs in-process limit "
          "| avg batch | in server (ms) | of which queued (ms) | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for protocol, batching, c, r in rows:
        print(f"| {protocol} | {batching} | {c} | {r['throughput']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['throughput'] / limit:.2f} | {r['avg_batch']:.1f} | {r['server_ms']:.1f} | {r['queue_ms']:.1f} | {r['errors']} |")
    goal = [r for protocol, b, c, r in rows if b == "on" and c == max(args.concurrency)]
    if goal:
        best = max(g["throughput"] for g in goal) / limit
        print(f"\nGoal (dynamic batching, concurrency {max(args.concurrency)}: >= 0.90 of the limit): best {best:.2f}")
    if growth:
        start, first, last = growth
        print(f"\nRepeated load/unload of ResNet-18 ({args.load_unload} cycles, explicit mode): server RSS {start:.0f} MB at start, "
              f"{first:.0f} MB after the first cycle, {last:.0f} MB after the last ({last - first:+.0f} MB growth)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
