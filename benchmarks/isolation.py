"""Worker-process isolation and backpressure (issue 11): what they cost and what they buy.

1. Direct calls: one instance of each model called back to back from this process, as a thread
   backend and as a process instance (``ProcessInstance``), interleaved: what crossing to the worker
   process costs per call, with no server or client in the way.
2. Throughput of one process-isolated instance (``instance_isolation: process``: the model runs in
   a worker process, tensors cross through shared memory) beside one in-process thread instance of
   the same model, served by the same `tuili serve`, over gRPC: ResNet-18 and the digits CNN.
   Goals: >= 0.9x on ResNet-18, >= 0.7x on the digits CNN. Beside the rates: the server's CPU time
   per inference (server and worker processes, from /proc), the time inside the backend's infer
   call and the mean batch, from the server's statistics.
3. A 10x overload: open-loop requests at ten times what a model can serve, with a bounded queue
   and a per-request deadline; the latency of the refusals (goal p99 < 10 ms), and whether the
   accepted requests met their deadline.

    .venv/bin/python benchmarks/isolation.py                          # ~2.5 minutes
    .venv/bin/python benchmarks/isolation.py --seconds 12 --rounds 4  # steadier on a shared machine
    .venv/bin/python benchmarks/isolation.py --models digits_cnn --concurrency 1 4 8 --no-overload

The load generator runs in this process (asyncio, tritonclient's gRPC aio client) on the same
cores as the server. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

from tuili.bench.server import start_server, stop_server

MODELS = {  # zoo name -> (input shape of one request, classes)
    "resnet18": ((1, 3, 224, 224), 1000),
    "digits_cnn": ((1, 1, 8, 8), 10),
}
CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: 16
input [ {{ name: "input" data_type: TYPE_FP32 dims: {dims} }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {classes} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 0 }}
parameters {{ key: "instance_isolation" value: {{ string_value: "{isolation}" }} }}
"""
SLOW_PY = '''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            time.sleep(SECONDS)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]))
        return out
'''
SLOW_CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { default_queue_policy { max_queue_size: 8 } }
"""


def build_repo(root: str, service_s: float) -> str:
    from tuili import zoo

    for model, (shape, classes) in MODELS.items():
        path = os.path.join(root, f"{model}.onnx")
        zoo.export(model, path)
        for isolation in ("thread", "process"):
            d = os.path.join(root, "repo", f"{model}_{isolation}")
            os.makedirs(os.path.join(d, "1"), exist_ok=True)
            shutil.copyfile(path, os.path.join(d, "1", "model.onnx"))
            with open(os.path.join(d, "config.pbtxt"), "w") as f:
                f.write(CONFIG.format(name=f"{model}_{isolation}", dims=list(shape[1:]), classes=classes, isolation=isolation))
    d = os.path.join(root, "repo", "slow")
    os.makedirs(os.path.join(d, "1"), exist_ok=True)
    with open(os.path.join(d, "1", "model.py"), "w") as f:
        f.write(SLOW_PY.replace("SECONDS", repr(service_s)))
    with open(os.path.join(d, "config.pbtxt"), "w") as f:
        f.write(SLOW_CONFIG)
    return os.path.join(root, "repo")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and of every process below it (the server's workers)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for children in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{children}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


async def closed_loop(url: str, model: str, shape, concurrency: int, seconds: float, warmup: float, server_pid: int):
    """(inferences per second, server CPU seconds per inference) with ``concurrency`` clients each
    sending the next request on an answer."""
    import tritonclient.grpc.aio as tc

    client = tc.InferenceServerClient(url)
    inp = tc.InferInput("input", list(shape), "FP32")
    inp.set_data_from_numpy(np.random.rand(*shape).astype(np.float32))
    done = 0
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + seconds

    async def worker():
        nonlocal done
        while (t := time.perf_counter()) < t_end:
            await client.infer(model, [inp])
            if t >= t_measure and time.perf_counter() <= t_end:
                done += 1

    async def cpu_meter():
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        start = cpu_seconds(server_pid)
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        return cpu_seconds(server_pid) - start

    cpu, *_ = await asyncio.gather(cpu_meter(), *(worker() for _ in range(concurrency)))
    await client.close()
    return done / seconds, cpu / max(done, 1)


def direct_calls(repo: str, model: str, shape, calls: int) -> dict[str, np.ndarray]:
    """Microseconds per ``infer`` call of one instance, thread vs process, called back to back from
    this process (no server, no client): what crossing to the worker process costs per call."""
    from tuili.backends.base import create_backend
    from tuili.backends.worker import ProcessInstance
    from tuili.model_config import parse_model_config

    d = os.path.join(repo, f"{model}_thread")
    with open(os.path.join(d, "config.pbtxt")) as f:
        config = parse_model_config(f.read(), validate=False)
    feeds = {"input": np.random.rand(*shape).astype(np.float32)}
    instances = {"thread": create_backend("onnxruntime"), "process": ProcessInstance("onnxruntime")}
    times: dict[str, list[float]] = {k: [] for k in instances}
    try:
        for b in instances.values():
            b.model_name = model
            b.load(d, os.path.join(d, "1"), config)
            for _ in range(3):
                b.infer(feeds)
        for _ in range(calls):
            for kind, b in instances.items():  # interleaved: drift hits both alike
                t0 = time.perf_counter()
                b.infer(feeds)
                times[kind].append((time.perf_counter() - t0) * 1e6)
    finally:
        for b in instances.values():
            b.unload()
    return {k: np.array(v) for k, v in times.items()}


def executions(url: str, model: str) -> np.ndarray:
    """(executions, inferences, nanoseconds inside the backend's infer call) the server counted so far."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    n = sum(int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", []))
    ns = sum(int(b["compute_infer"].get("ns", 0)) for b in stats.get("batch_stats", []))
    return np.array([n, int(stats.get("inference_count", 0)), ns], dtype=np.int64)


async def overload(url: str, rate: float, seconds: float, deadline_us: int) -> dict:
    """Open loop: ``rate`` requests/s to the slow model, each with a deadline; latencies by outcome."""
    import grpc
    import tritonclient.grpc.aio as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url)
    inp = tc.InferInput("X", [1], "FP32")
    inp.set_data_from_numpy(np.zeros(1, np.float32))
    lat: dict[str, list[float]] = {"ok": [], "refused": [], "expired": [], "other": []}

    async def one():
        t0 = time.perf_counter()
        try:
            await client.infer("slow", [inp], timeout=deadline_us)
            kind = "ok"
        except InferenceServerException as e:
            status = e.status() or ""
            kind = ("refused" if status == str(grpc.StatusCode.UNAVAILABLE) else
                    "expired" if status == str(grpc.StatusCode.DEADLINE_EXCEEDED) else "other")
        lat[kind].append((time.perf_counter() - t0) * 1000)

    tasks = []
    t_start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    await client.close()
    return lat


def rss_mb(pid: int) -> float:
    """Resident memory of a process now, in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class RssSampler:
    """The largest resident memory of a process, sampled every 20 ms while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def pct(xs: list[float], q: float) -> str:
    return f"{np.percentile(xs, q):.1f}" if xs else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per throughput cell")
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--rounds", type=int, default=2, help="thread/process alternations per cell (the cell's seconds split)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--no-overload", action="store_true", help="skip the 10x overload part")
    p.add_argument("--direct-calls", type=int, default=2000, help="back-to-back calls per model in the direct-call part "
                                                                   "(a tenth for ResNet-18; 0 skips it)")
    p.add_argument("--service-ms", type=float, default=20.0, help="time the overloaded model takes per request")
    p.add_argument("--overload-seconds", type=float, default=4.0)
    p.add_argument("--deadline-ms", type=float, default=250.0, help="the timeout each overload request carries")
    args = p.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="tuili-bench-isolation-")
    rows, lat, direct, rss_seen = [], None, {}, ()
    try:
        repo = build_repo(workdir, args.service_ms / 1000)
        for model in args.models if args.direct_calls else []:
            print(f"{model} direct calls ...", file=sys.stderr)
            direct[model] = direct_calls(repo, model, MODELS[model][0], args.direct_calls // (10 if model == "resnet18" else 1))
        proc, ports = start_server(repo, workdir)
        url = f"127.0.0.1:{ports['grpc']}"
        try:
            for model in args.models:
                shape = MODELS[model][0]
                for c in args.concurrency:
                    r: dict[str, list] = {"thread": [], "process": []}
                    for isolation in ("thread", "process") * args.rounds:  # interleaved: drift hits both alike
                        print(f"{model} {isolation} concurrency {c} ...", file=sys.stderr)
                        before = executions(url, f"{model}_{isolation}")
                        rate, cpu = asyncio.run(closed_loop(url, f"{model}_{isolation}", shape, c, args.seconds / args.rounds,
                                                            args.warmup, proc.pid))
                        r[isolation].append((rate, cpu, executions(url, f"{model}_{isolation}") - before))
                    rows.append((model, c, r))
            if not args.no_overload:
                rate = 10 * 1000 / args.service_ms
                print(f"overload: {rate:.0f} requests/s for {args.overload_seconds} s ...", file=sys.stderr)
                rss_before = rss_mb(proc.pid)
                with RssSampler(proc.pid) as rss:
                    lat = asyncio.run(overload(url, rate, args.overload_seconds, int(args.deadline_ms * 1000)))
                rss_seen = (rss_before, rss.peak, rss_mb(proc.pid))
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    from tuili.runtime import cpu

    if direct:
        print(f"\n### Direct calls of one instance, back to back, no server: microseconds per call, {cpu.info().describe()}\n")
        print("| model | calls | thread p50 | process p50 | thread p90 | process p90 | process - thread (p50) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for model, t in direct.items():
            th, pr = t["thread"], t["process"]
            print(f"| {model} | {len(th)} | {np.median(th):.0f} | {np.median(pr):.0f} | {np.percentile(th, 90):.0f} | "
                  f"{np.percentile(pr, 90):.0f} | {np.median(pr) - np.median(th):.0f} |")
    print(f"\n### Process-isolated vs thread instances: one instance, onnxruntime backend, gRPC, {cpu.info().describe()}\n")
    print("| model | concurrency | thread (infer/s) | process (infer/s) | process / thread | goal | "
          "server CPU ms/infer, thread / process | infer call us, thread / process | batch, thread / process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    goals = {"resnet18": 0.9, "digits_cnn": 0.7}
    for model, c, r in rows:
        rate = {k: float(np.mean([x[0] for x in v])) for k, v in r.items()}
        cpu = {k: 1000 * float(np.mean([x[1] for x in v])) for k, v in r.items()}
        ex = {k: sum(x[2] for x in v) for k, v in r.items()}
        call_us = {k: e[2] / max(e[0], 1) / 1000 for k, e in ex.items()}
        batch = {k: e[1] / max(e[0], 1) for k, e in ex.items()}
        t, pr = rate["thread"], rate["process"]
        print(f"| {model} | {c} | {t:.1f} | {pr:.1f} | {pr / t:.2f} | >= {goals[model]} | {cpu['thread']:.2f} / {cpu['process']:.2f} | "
              f"{call_us['thread']:.0f} / {call_us['process']:.0f} | {batch['thread']:.2f} / {batch['process']:.2f} |")
    if lat is not None:
        total = sum(len(v) for v in lat.values())
        print(f"\n### 10x overload: {10 * 1000 / args.service_ms:.0f} requests/s for {args.overload_seconds:.0f} s to a python model "
              f"serving {1000 / args.service_ms:.0f}/s (one instance, max_queue_size 8, timeout {args.deadline_ms:.0f} ms)\n")
        print("| outcome | requests | p50 (ms) | p99 (ms) | max (ms) |")
        print("|---|---:|---:|---:|---:|")
        for kind, label in (("ok", "answered"), ("refused", "refused: queue full (UNAVAILABLE)"),
                            ("expired", "expired before running (DEADLINE_EXCEEDED)"), ("other", "other errors")):
            xs = lat[kind]
            print(f"| {label} | {len(xs)} | {pct(xs, 50)} | {pct(xs, 99)} | {max(xs) if xs else 0:.1f} |")
        late = sum(1 for x in lat["ok"] if x > args.deadline_ms + args.service_ms)
        print(f"\n{total} requests, every one answered; refusal p99 {pct(lat['refused'], 99)} ms (goal < 10 ms); "
              f"answered requests finishing later than deadline + one service time: {late}; server RSS before / "
              f"peak during / after the overload: {' / '.join(f'{v:.0f}' for v in rss_seen)} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
