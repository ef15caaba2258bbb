"""Scale-out benchmark (issue 15): ResNet-18 through the Ray ingress, 2 replicas on 2 Ray nodes, beside
`tuili serve` on the same machine. Throughput over HTTP (the official tritonclient, binary tensors),
closed loop at each concurrency; the ratio Ray / tuili serve first.

    .venv/bin/python -m benchmarks.scaleout                  # ~5 minutes; needs root (namespaces) and the ray extra
    .venv/bin/python -m benchmarks.scaleout --seconds 5 --concurrency 4 --rounds 1
    .venv/bin/python -m benchmarks.scaleout --ray-only --cpu --rounds 1   # where the Ray path's CPU goes

The Ray cluster (two `ray start` node processes, 1 CPU each, so the two replicas land on different
nodes) runs inside private network and pid namespaces (tuili.deploy.local): the script re-runs
itself there, and so does `tuili serve`, so both are measured the same way. Every replica and
instance runs onnxruntime with one intra-op thread; `tuili serve` is measured with two instances
(the same compute as two replicas) and with one instance of two threads. All three servers run for
the whole benchmark and are measured in turn, round after round. With ``--cpu``, every process's
CPU is read from /proc (benchmarks.proc_cpu) while the cluster idles and during each Ray point.
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

from benchmarks import proc_cpu
from benchmarks.serve import load, resnet18_onnx
from tuili.bench.server import start_server, stop_server

CONFIG = """
name: "resnet18"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
dynamic_batching {{ }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}
{extra}
"""
RAY_BLOCK = """parameters { key: "ray" value: { string_value: '{"num_replicas": 2, "num_cpus": 1}' } }"""


def repository(root: str, model: str, instances: int, threads: int, extra: str = "") -> str:
    d = os.path.join(root, "resnet18")
    os.makedirs(os.path.join(d, "1"))
    try:  # a symlink out of the model directory would be refused
        os.link(model, os.path.join(d, "1", "model.onnx"))
    except OSError:  # another file system
        shutil.copyfile(model, os.path.join(d, "1", "model.onnx"))
    with open(os.path.join(d, "config.pbtxt"), "w") as f:
        f.write(CONFIG.format(instances=instances, threads=threads, extra=extra))
    return root


def measured_cpu(args, label: str, concurrency: int, url: str, breakdowns: dict) -> dict:
    """One load point; with ``--cpu``, each process's CPU over its measured seconds."""
    if not args.cpu:
        return asyncio.run(load("http", url, "resnet18", concurrency, args.seconds, warmup=2.0))
    snaps = []

    def sample():
        time.sleep(2.0)
        snaps.append(proc_cpu.snapshot())
        time.sleep(args.seconds)
        snaps.append(proc_cpu.snapshot())

    sampler = threading.Thread(target=sample)
    sampler.start()
    result = asyncio.run(load("http", url, "resnet18", concurrency, args.seconds, warmup=2.0))
    sampler.join()
    breakdowns[label, concurrency] = proc_cpu.table(proc_cpu.used(*snaps), args.seconds,
                                                    round(result["throughput"] * args.seconds))
    return result


def run(args) -> None:
    import ray
    from ray import serve

    from tuili.deploy.local import LocalRayCluster
    from tuili.deploy.ray import LOGGING_CONFIG, build_apps, model_app_name, run_apps
    from tuili.runtime import cpu

    urls: dict[str, str] = {}
    servers = []
    with tempfile.TemporaryDirectory() as work, LocalRayCluster(nodes=2, cpus_per_node=1, env=dict(args.ray_env)) as cluster:
        model = resnet18_onnx(work)
        try:
            for label, instances, threads in () if args.ray_only else (("tuili serve, 2 instances x 1 thread", 2, 1),
                                                                        ("tuili serve, 1 instance x 2 threads", 1, 2)):
                repo = repository(os.path.join(work, f"serve{instances}", "repo"), model, instances, threads)
                proc, ports = start_server(repo, os.path.dirname(repo))
                servers.append(proc)
                urls[label] = f"127.0.0.1:{ports['http']}"
            repo = repository(os.path.join(work, "ray"), model, 1, 1, RAY_BLOCK)
            ray.init(address=cluster.address, log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": 8000}, logging_config=LOGGING_CONFIG)
            run_apps(build_apps(repo))
            handle = serve.get_deployment_handle("resnet18", app_name=model_app_name("tuili", "resnet18"))
            nodes = {handle.node_id.remote().result(timeout_s=60) for _ in range(20)}
            ray_label = f"Ray Serve, 2 replicas on {len(nodes)} nodes"
            urls[ray_label] = "127.0.0.1:8000"
            breakdowns: dict = {}
            if args.cpu:  # what the cluster (and the idle servers) spend with no request
                before = proc_cpu.snapshot()
                time.sleep(args.seconds)
                breakdowns["idle", 0] = proc_cpu.table(proc_cpu.used(before, proc_cpu.snapshot()), args.seconds, 0)
            # interleaved, round after round: the load other work puts on the machine drifts
            results = {(label, c, r): measured_cpu(args, label, c, url, breakdowns)
                       for r in range(args.rounds) for c in args.concurrency for label, url in urls.items()}
            serve.shutdown()
        finally:
            for proc in servers:
                stop_server(proc)

    print(f"CPU: {cpu.info().describe()}; measured under load (other work shared the cores)\n")
    for (label, c), text in breakdowns.items():
        print(f"CPU by process, {label}" + (f", concurrency {c} (last round)" if c else f" ({args.seconds:g} s)") + f":\n\n{text}\n")
    if args.ray_only:
        for (label, c, r), m in results.items():
            print(f"| {label} | {c} | {r + 1} | {m['throughput']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} | {m['errors']} |")
        return
    rounds = " / ".join(f"round {r + 1}" for r in range(args.rounds))
    print(f"| concurrency | Ray / best tuili serve, {rounds} (goal >= 0.8) |")
    print("|---:|---:|")
    for c in args.concurrency:
        ratios = []
        for r in range(args.rounds):
            best = max(results[label, c, r]["throughput"] for label in urls if label.startswith("tuili"))
            ratios.append(f"{results[ray_label, c, r]['throughput'] / best:.2f}" if best else "-")
        print(f"| {c} | {' / '.join(ratios)} |")
    print("\n| server | concurrency | round | infer/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (label, c, r), m in results.items():
        print(f"| {label} | {c} | {r + 1} | {m['throughput']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} | {m['errors']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point (after 2 s of warm-up)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[4, 8])
    p.add_argument("--rounds", type=int, default=2, help="measure every server this many times, interleaved")
    p.add_argument("--ray-only", action="store_true", help="measure the Ray deployment alone (no tuili serve beside it)")
    p.add_argument("--cpu", action="store_true", help="also print each process's CPU (from /proc) idle and under load")
    p.add_argument("--ray-env", type=lambda s: tuple(s.split("=", 1)), nargs="*", default=[], metavar="NAME=VALUE",
                   help="environment of the Ray nodes (Ray's and Ray Serve's RAY_* settings)")
    args = p.parse_args()
    from tuili.deploy.local import ISOLATED_ENV, isolated

    if os.environ.get(ISOLATED_ENV) == "1":
        run(args)
        return
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:  # re-run inside the namespaces, print its table
        status = isolated([sys.executable, "-m", "benchmarks.scaleout", *sys.argv[1:]], timeout=3600, log_path=log.name)
        text = log.read()
    table = text[text.find("CPU: "):] if status == 0 and "CPU: " in text else text[-6000:]
    print(table)
    sys.exit(status)


if __name__ == "__main__":
    main()
