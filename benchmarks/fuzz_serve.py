"""Fuzz a real `tuili serve` over both protocols and count what went wrong.

    python -m benchmarks.fuzz_serve [--requests 10000] [--good-every 100] [--src DIR]

Sends ``--requests`` hostile requests per protocol (tests/serve/fuzz_requests.py: valid requests
with fields replaced by arbitrary values, garbage bodies and protobuf, compression bombs, deep
nesting, absurd shapes) and, after every ``--good-every`` of them, good requests to each model
whose answers are checked. Prints a markdown table: requests, answers by class, 5xx / server
errors, server deaths (the server is restarted and the count goes on) and good-after-bad failures.
``--src`` serves another checkout's sources (to compare with an older tuili). Then one gzip bomb
(about 1 MB inflating to 1 GiB) against a server with the default limits, with health probes
meanwhile: its answer, the longest health probe and the server's peak RSS.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import grpc
import httpx
import tritonclient.grpc as tg
import tritonclient.http as th
from hypothesis import HealthCheck, Phase, given, settings

from tests.serve.fuzz_requests import (  # run as a module from the repository root: tests is importable
    FUZZ_MAX_BODY,
    GRPC_CLIENT_CODES,
    build_fuzz_repository,
    good_grpc,
    good_http,
    grpc_request,
    http_request,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    def __init__(self, repo: str, src: str, workdir: str, max_body: int = FUZZ_MAX_BODY):
        self.repo, self.src, self.workdir, self.max_body = repo, src, workdir, max_body
        self.start()

    def start(self) -> None:
        ready = os.path.join(self.workdir, f"ready-{time.monotonic_ns()}.json")
        env = dict(os.environ, PYTHONPATH=self.src)
        self.log = open(os.path.join(self.workdir, "server.log"), "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuili.cli", "serve", "--model-repository", self.repo, "--host", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-file", ready,
             "--max-body-bytes", str(self.max_body)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise RuntimeError(f"tuili serve exited with {self.proc.returncode}")
            time.sleep(0.05)
        with open(ready) as f:
            ports = json.load(f)
        self.http, self.grpc = f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


def fuzz(server: Server, protocol: str, n: int, good_every: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    clients: dict = {}

    def connect():
        for c in clients.values():
            c.close()
        clients["http"] = httpx.Client(base_url=f"http://{server.http}", timeout=60)
        clients["tc"] = (th if protocol == "http" else tg).InferenceServerClient(server.http if protocol == "http" else server.grpc)
        clients["channel"] = grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", -1),
                                                                          ("grpc.max_receive_message_length", -1)])

    def after_batch():
        if not server.alive():
            counts["server deaths"] += 1
            server.stop()
            server.start()
            connect()
        try:
            ok = (good_http if protocol == "http" else good_grpc)(clients["tc"])
        except Exception as e:  # noqa: BLE001 - counted
            ok = False
            print(f"good request failed: {e}", file=sys.stderr)
        counts["good requests"] += 1
        counts["good-after-bad failures"] += not ok

    def send(req):
        try:
            if protocol == "http":
                path, body, headers = req
                r = clients["http"].post(path, content=body, headers=headers)
                counts[f"HTTP {r.status_code // 100}xx"] += 1
                if r.status_code >= 500:
                    counts["5xx / server errors"] += 1
                    print(f"HTTP {r.status_code} for POST {path[:80]} {body[:100]!r}: {r.text[:300]}", file=sys.stderr)
            else:
                method, data = req
                try:
                    clients["channel"].unary_unary(f"/inference.GRPCInferenceService/{method}")(data, timeout=60)
                    counts["OK"] += 1
                except grpc.RpcError as e:
                    counts[e.code().name] += 1
                    if e.code().name not in GRPC_CLIENT_CODES:
                        counts["5xx / server errors"] += 1
                        print(f"{e.code().name} for {method} {data[:100]!r}: {(e.details() or '')[:300]}", file=sys.stderr)
        except (httpx.HTTPError, OSError) as e:
            counts["transport errors"] += 1
            print(f"transport error: {e!r}", file=sys.stderr)
        counts["requests"] += 1
        if counts["requests"] % good_every == 0:
            after_batch()

    connect()
    strategy = http_request() if protocol == "http" else grpc_request()
    run = settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                   suppress_health_check=list(HealthCheck))(given(req=strategy)(send))
    run()
    after_batch()
    for c in clients.values():
        c.close()
    return counts


def gzip_bomb(size: int = 1 << 30) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 24)
    return b"".join([*(z.compress(block) for _ in range(size // len(block))), z.flush()])


def bomb(server: Server) -> dict:
    """Send one gzip bomb; probe /v2/health/live every 10 ms meanwhile."""
    body = gzip_bomb()
    probes: list[float] = []
    done = threading.Event()

    def probe():
        with httpx.Client(base_url=f"http://{server.http}", timeout=60) as c:
            while not done.is_set():
                t = time.perf_counter()
                c.get("/v2/health/live")
                probes.append(time.perf_counter() - t)
                time.sleep(0.01)

    th_ = threading.Thread(target=probe)
    th_.start()
    t = time.perf_counter()
    r = httpx.post(f"http://{server.http}/v2/models/add_sub/infer", content=body, headers={"Content-Encoding": "gzip"}, timeout=120)
    seconds = time.perf_counter() - t
    done.set()
    th_.join()
    with open(f"/proc/{server.proc.pid}/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    return {"compressed MB": round(len(body) / 1e6, 2), "answer": f"{r.status_code} {r.json().get('error', '')[:60]}",
            "seconds": round(seconds, 3), "longest health probe ms": round(1000 * max(probes or [0]), 1),
            "server peak RSS MB": round(int(hwm) / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000, help="fuzzed requests per protocol")
    ap.add_argument("--good-every", type=int, default=100, help="good requests after every this many bad ones")
    ap.add_argument("--src", default=os.path.join(ROOT, "src"), help="the tuili sources to serve")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "repo")
        build_fuzz_repository(repo)
        server = Server(repo, args.src, tmp)
        rows = {}
        try:
            for protocol in ("http", "grpc"):
                t = time.perf_counter()
                rows[protocol] = fuzz(server, protocol, args.requests, args.good_every)
                rows[protocol]["seconds"] = round(time.perf_counter() - t)
        finally:
            server.stop()
        server = Server(repo, args.src, tmp, max_body=64 * 1024 * 1024)
        try:
            bombed = bomb(server)
        finally:
            server.stop()
    keys = ["requests", "5xx / server errors", "server deaths", "good requests", "good-after-bad failures", "transport errors", "seconds"]
    print("| protocol | " + " | ".join(keys) + " | answers |")
    print("|---" * (len(keys) + 2) + "|")
    for protocol, c in rows.items():
        answers = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k not in keys)
        print(f"| {protocol} | " + " | ".join(str(c.get(k, 0)) for k in keys) + f" | {answers} |")
    print()
    print("| gzip bomb, default limits | " + " | ".join(bombed) + " |")
    print("|---" * (len(bombed) + 1) + "|")
    print("| 1 GiB of zeros | " + " | ".join(str(v) for v in bombed.values()) + " |")


if __name__ == "__main__":
    main()
