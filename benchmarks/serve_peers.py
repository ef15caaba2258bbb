"""The same onnxruntime model served by tuili and by the Python servers a user might pick instead
(issue 13, item 8): a plain FastAPI/uvicorn endpoint, LitServe, Ray Serve with @serve.batch and
MLServer, each on 127.0.0.1 with the same session settings (intra-op threads = cores, one inter-op
thread, no spinning), driven by the same client from this process (pre-encoded requests over
keep-alive HTTP/1.1, tuili.bench.perf's load engine), at concurrency 1/4/16/32. Binary payloads
where the peer takes them (tuili: V2 binary extension; FastAPI, Ray Serve: raw float32 bytes);
LitServe decodes JSON in its workers (base64 bytes); MLServer gets V2 JSON. Two regimes: ResNet-18
(compute-bound) and the digits CNN (overhead-bound, sub-millisecond).

    make peers            # .venv-peers with LitServe and MLServer (FastAPI and Ray come with tuili[ray])
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/serve_peers.py
    .venv/bin/python benchmarks/serve_peers.py --models digits_cnn --peers tuili,fastapi --concurrency 1 16

Ray binds its ports on all interfaces: when Ray Serve is among the peers the script re-runs itself
in a network namespace that has only loopback (needs root: `unshare -n`).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_DIR = os.path.join(ROOT, "benchmarks", "peers")
MODELS = {"resnet18": (3, 224, 224), "digits_cnn": (1, 8, 8)}
ALL_PEERS = ["tuili", "fastapi", "litserve", "ray", "mlserver"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def http_post(path: str, port: int, body: bytes, headers: dict) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Content-Length: {len(body)}\r\n\r\n").encode() + body


class Peer:
    """One server: how to start it, when it is ready, and the bytes of one request."""

    def __init__(self, name: str, python: str, work: str):
        self.name, self.python, self.work = name, python, work
        self.proc: subprocess.Popen | None = None
        self.port = free_port()

    def start(self, model: str, onnx_path: str) -> None:
        log = open(os.path.join(self.work, f"{self.name}-{model}.log"), "w")
        env = dict(os.environ, PYTHONPATH=PEERS_DIR)
        cmd, health = self.command(model, onnx_path)
        # its own process group: LitServe and MLServer spawn workers that outlive a SIGTERM to the parent
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.work,
                                     start_new_session=True)
        wait_ready(f"http://127.0.0.1:{self.port}{health}", self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers left behind by the group's leader
        except ProcessLookupError:
            pass
        self.proc.wait()

    def command(self, model: str, onnx_path: str) -> tuple[list[str], str]:
        script = os.path.join(PEERS_DIR, f"{self.name}_app.py")
        health = {"fastapi": "/health", "litserve": "/health", "ray": "/-/healthz"}[self.name]
        return [self.python, script, onnx_path, str(self.port)], health

    def request(self, model: str, x: np.ndarray) -> bytes:
        shape = ",".join(map(str, x.shape))
        if self.name == "litserve":
            body = json.dumps({"b64": base64.b64encode(x.tobytes()).decode(), "shape": list(x.shape)}).encode()
            return http_post("/predict", self.port, body, {"Content-Type": "application/json"})
        return http_post("/predict", self.port, x.tobytes(), {"Content-Type": "application/octet-stream", "X-Shape": shape})


class Tuili(Peer):
    def start(self, model: str, onnx_path: str) -> None:
        from tuili.bench.server import start_server

        repo = os.path.join(self.work, "repo")
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(os.path.dirname(os.path.dirname(onnx_path)), os.path.join(repo, model))  # the example's config
        config = os.path.join(repo, model, "config.pbtxt")
        with open(config) as f:  # the peers' batch limit (the example's config may allow more)
            text = re.sub(r"max_batch_size: \d+", "max_batch_size: 16", f.read())
        with open(config, "w") as f:
            f.write(text)
        self.proc, ports = start_server(repo, self.work)
        self.port = ports["http"]

    def stop(self) -> None:
        from tuili.bench.server import stop_server

        if self.proc is not None:
            stop_server(self.proc)

    def request(self, model: str, x: np.ndarray) -> bytes:
        from tuili.bench.perf.payload import ModelInputs, Payload, encode_http

        m = ModelInputs(model, "", 16, {"input": ("FP32", [-1, *x.shape[1:]])}, ["logits"])
        return encode_http(Payload(m, {"input": x}, len(x)), f"127.0.0.1:{self.port}")


class MLServer(Peer):
    def command(self, model: str, onnx_path: str) -> tuple[list[str], str]:
        d = os.path.join(self.work, "mlserver")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.join(d, model))
        with open(os.path.join(d, "settings.json"), "w") as f:
            json.dump({"host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(),
                       "parallel_workers": 0}, f)
        with open(os.path.join(d, model, "model-settings.json"), "w") as f:
            json.dump({"name": model, "implementation": "mlserver_runtime.OnnxRuntimeModel",
                       "parameters": {"uri": onnx_path}, "max_batch_size": 16, "max_batch_time": 0.002}, f)
        exe = os.path.join(os.path.dirname(self.python), "mlserver")
        return [exe, "start", d], f"/v2/models/{model}/ready"

    def request(self, model: str, x: np.ndarray) -> bytes:
        doc = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
        return http_post(f"/v2/models/{model}/infer", self.port, json.dumps(doc).encode(), {"Content-Type": "application/json"})


def in_process_limit(onnx_path: str, shape: tuple, seconds: float) -> float:
    """Best inferences/s of the same session called directly, over batch sizes 1..16."""
    sys.path.insert(0, PEERS_DIR)
    from common import run, session

    sess = session(onnx_path)
    best = 0.0
    for b in (1, 2, 4, 8, 16):
        x = np.random.rand(b, *shape).astype(np.float32)
        run(sess, x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            run(sess, x)
            n += b
        best = max(best, n / (time.perf_counter() - t0))
    return best


def measure(peer: Peer, model: str, x: np.ndarray, concurrency: int, args) -> dict:
    from tuili.bench.perf.load import Settings
    from tuili.bench.perf.load import measure as run_load
    from tuili.bench.perf.transport import HttpConnection

    request = peer.request(model, x)

    def make_send(_slot: int):
        conn = HttpConnection("127.0.0.1", peer.port)
        return lambda: conn.send(request)

    async def no_stats():
        return None

    settings = Settings(window_s=args.seconds, stability=0.1, max_windows=args.max_windows, warmup_s=args.warmup)
    p = asyncio.run(run_load("concurrency", concurrency, 1, make_send, settings, no_stats))
    return {"throughput": p.throughput, "p50": p.latency(50), "p99": p.latency(99), "errors": p.errors,
            "cpu": p.client_cpu_percent, "stable": p.stable, "why": p.errors_seen[:1]}


def in_loopback_only_namespace() -> bool:
    """Only loopback in this process's network namespace (/proc/self/net follows the namespace;
    /sys/class/net shows the namespace sysfs was mounted in)."""
    with open("/proc/self/net/dev") as f:
        names = {line.split(":")[0].strip() for line in f.readlines()[2:]}
    return names <= {"lo"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--peers", nargs="+", default=ALL_PEERS, choices=ALL_PEERS)
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 32])
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--max-windows", type=int, default=6)
    ap.add_argument("--peers-venv", default=os.path.join(ROOT, ".venv-peers"), help="venv with litserve and mlserver")
    args = ap.parse_args()
    if "ray" in args.peers and not in_loopback_only_namespace():
        if os.environ.get("TUILI_PEERS_NETNS"):
            sys.exit("still not in a loopback-only network namespace after unshare -n: not starting Ray")
        if os.geteuid() != 0:
            sys.exit("Ray Serve binds on all interfaces: run as root (for unshare -n) or leave out --peers ray")
        cmd = " ".join(map(shlex.quote, [sys.executable, *sys.argv]))
        os.environ["TUILI_PEERS_NETNS"] = "1"
        os.execvp("unshare", ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {cmd}"])
    from tuili.runtime import cpu

    peer_python = os.path.join(args.peers_venv, "bin", "python")
    print(f"CPU: {cpu.info().describe()}; client: this process, pre-encoded requests, keep-alive HTTP/1.1\n")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "examples.build", os.path.join(ROOT, "examples", "model_repository")],
                       cwd=ROOT, check=True, capture_output=True)
        for model in args.models:
            onnx_path = os.path.join(ROOT, "examples", "model_repository", model, "1", "model.onnx")
            limit = in_process_limit(onnx_path, MODELS[model], 3.0)
            x = np.random.default_rng(0).random((1, *MODELS[model]), dtype=np.float32)
            for name in args.peers:
                python = peer_python if name in ("litserve", "mlserver") else sys.executable
                if not os.path.exists(python):
                    print(f"skipping {name}: {python} not found (make peers)")
                    continue
                cls = {"tuili": Tuili, "mlserver": MLServer}.get(name, Peer)
                peer = cls(name, python, work)
                try:
                    peer.start(model, onnx_path)
                    for c in args.concurrency:
                        r = measure(peer, model, x, c, args)
                        rows.append({"model": model, "peer": name, "c": c, "limit": limit, **r})
                        print(f"  {model} {name} c={c}: {r['throughput']:.1f}/s p99 {r['p99']:.2f} ms", file=sys.stderr)
                except Exception as e:  # noqa: BLE001 - one peer failing must not end the benchmark
                    rows.append({"model": model, "peer": name, "c": 0, "error": f"{type(e).__name__}: {e}"})
                finally:
                    peer.stop()
    print(table(rows))


def table(rows: list[dict]) -> str:
    out = ["| model | c | peer | throughput / tuili's | of in-process limit | infer/s | p50 ms | p99 ms | errors "
           "| client CPU % |", "|---|---|---|---|---|---|---|---|---|---|"]
    tuili = {(r["model"], r["c"]): r["throughput"] for r in rows if r["peer"] == "tuili" and "error" not in r}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | | {r['peer']} | error: {r['error'][:120]} ||||||")
            continue
        base = tuili.get((r["model"], r["c"]))
        ratio = f"{r['throughput'] / base:.2f}" if base else "-"
        out.append(f"| {r['model']} | {r['c']} | {r['peer']} | {ratio} | {r['throughput'] / r['limit']:.2f} | "
                   f"{r['throughput']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['cpu']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
