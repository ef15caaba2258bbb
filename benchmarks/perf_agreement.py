"""Does `tuili perf` agree with Triton's perf_analyzer on the same server? (issue 13, item 4/7)

Starts `tuili serve` on the example model repository, then measures each (model, protocol,
concurrency) twice — with perf_analyzer (Triton's C++ client) and with `tuili perf` — one after the
other, each in its own process, and prints the ratios first. Both clients run on the same cores as
the server, so a client that burns CPU lowers the figure it reports: agreement is the point.

    make perf-analyzer      # a separate venv with tritonclient 2.45.0's perf_analyzer (needs libb64-0d)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/perf_agreement.py
    .venv/bin/python benchmarks/perf_agreement.py --models digits_cnn --concurrency 1 16 --seconds 3

perf_analyzer is found at $PERF_ANALYZER or .venv-perf-analyzer/bin/perf_analyzer; the CUDA
runtime library it links against comes from the nvidia-cuda-runtime-cu12 wheel in that venv.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile

from tuili.bench.server import start_server, stop_server
from tuili.runtime import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_perf_analyzer() -> tuple[str, dict]:
    exe = os.environ.get("PERF_ANALYZER") or os.path.join(ROOT, ".venv-perf-analyzer", "bin", "perf_analyzer")
    if not os.path.exists(exe):
        sys.exit(f"perf_analyzer not found at {exe}: run `make perf-analyzer` or set PERF_ANALYZER")
    venv = os.path.dirname(os.path.dirname(exe))
    libs = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "nvidia", "cuda_runtime", "lib"))
    env = dict(os.environ)
    if libs:
        env["LD_LIBRARY_PATH"] = ":".join([libs[0], env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return exe, env


def perf_analyzer(exe: str, env: dict, model: str, proto: str, port: int, c: int, seconds: float, shm: str,
                  work: str) -> dict:
    out = os.path.join(work, "pa.csv")
    cmd = [exe, "-m", model, "-i", proto, "-u", f"127.0.0.1:{port}", "--concurrency-range", f"{c}:{c}",
           "--measurement-interval", str(int(seconds * 1000)), "--max-trials", "10", "-f", out,
           "--shared-memory", shm]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return {"error": (r.stdout + r.stderr).strip().splitlines()[-1:]}
    with open(out) as f:
        row = next(csv.DictReader(f))
    return {"throughput": float(row["Inferences/Second"]), "p50": float(row["p50 latency"]) / 1e3,
            "p99": float(row["p99 latency"]) / 1e3}


def tuili_perf(model: str, proto: str, port: int, c: int, seconds: float, shm: str, work: str) -> dict:
    out = os.path.join(work, "tp.json")
    cmd = [sys.executable, "-m", "tuili.cli", "perf", "-m", model, "-i", proto, "-u", f"127.0.0.1:{port}",
           "--concurrency-range", str(c), "--measurement-interval", str(int(seconds * 1000)), "--max-trials", "10",
           "--json", out, "--shared-memory", shm]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1:]}
    with open(out) as f:
        p = json.load(f)["points"][0]
    return {"throughput": p["throughput_infer_s"], "p50": p["p50_ms"], "p99": p["p99_ms"], "cpu": p["client_cpu_pct"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "digits_cnn"])
    ap.add_argument("--protocols", nargs="+", default=["http", "grpc"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement window of both tools")
    ap.add_argument("--shared-memory", default="none", choices=["none", "system"])
    ap.add_argument("--repo", default=os.path.join(ROOT, "examples", "model_repository"))
    args = ap.parse_args()
    exe, env = find_perf_analyzer()
    subprocess.run([sys.executable, "-m", "examples.build", args.repo], cwd=ROOT, check=True)  # idempotent
    print(f"CPU: {cpu.info().describe()}\n")
    print(f"shared memory: {args.shared_memory}; window {args.seconds:g} s; both clients on the server's cores\n")
    print("| model | protocol | concurrency | tuili perf / perf_analyzer throughput | p99 ratio | perf_analyzer infer/s "
          "| tuili perf infer/s | perf_analyzer p99 ms | tuili perf p99 ms | tuili perf client CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        proc, ports = start_server(args.repo, work)
        try:
            for model in args.models:
                for proto in args.protocols:
                    for c in args.concurrency:
                        pa = perf_analyzer(exe, env, model, proto, ports[proto], c, args.seconds, args.shared_memory, work)
                        tp = tuili_perf(model, proto, ports[proto], c, args.seconds, args.shared_memory, work)
                        if "error" in pa or "error" in tp:
                            print(f"| {model} | {proto} | {c} | error: {pa.get('error') or tp.get('error')} |||||||")
                            continue
                        print(f"| {model} | {proto} | {c} | **{tp['throughput'] / pa['throughput']:.2f}** | "
                              f"{tp['p99'] / pa['p99']:.2f} | {pa['throughput']:.1f} | {tp['throughput']:.1f} | "
                              f"{pa['p99']:.2f} | {tp['p99']:.2f} | {tp['cpu']:.0f} |", flush=True)
        finally:
            stop_server(proc)


if __name__ == "__main__":
    main()
