"""SLO-adaptive batching (AIMD, ``slo_ms``) against fixed max_queue_delay settings under a rising
offered load (issue 13, item 3).

One `tuili serve` holds the same python model several times: a batch of b requests takes
``--fixed-ms + b * --per-item-ms`` (a sleep: an accelerator-like cost, fixed cost dominant, so the
scheduler decides the outcome, not the 2 shared cores), max_batch_size 64, one instance. The fixed
models use Triton's knobs (max_queue_delay_microseconds 0, 2, 5, 10, 20 ms; with 0 the batcher
takes everything queued, as Triton's does); the AIMD model sets ``slo_ms`` (delay 0), so its
requests carry the objective as their deadline and the batcher drops the oldest while the rest
would not make it. A reference row, ``fixed_0ms_timeout``, is delay 0 with Triton's
``default_timeout_microseconds`` = the SLO (requests past it dropped): fixed batching with the
deadline but without the latency model. An open-loop client in its own process sends Poisson
arrivals at each rate (rising past the model's capacity) for ``--seconds``; a request is *in time*
when answered within ``--slo-ms``.

The goal's criterion (Clipper's, and Clockwork's goodput): a setting holds the SLO at a rate when
the p99 latency of the requests it answers is within the objective; its figure is its goodput
there, requests answered in time per second (a dropped request is a refusal the client sees at
once: it counts against the goodput, never for it). The ratio printed is AIMD's best goodput over
the best goodput of any fixed-delay setting. A stricter criterion is printed beside it: p99 over
every request sent (dropped = infinitely late), so at most 1% may be dropped. With this model's
linear cost, delay 0 (take everything queued) is close to the best a work-conserving batcher can do
before the knee, so under the strict criterion AIMD can at best tie it; its gain is past the knee,
where the fixed settings answer everything late and AIMD keeps answering most requests in time.

    .venv/bin/python benchmarks/slo.py                      # ~4 min
    .venv/bin/python benchmarks/slo.py --rates 100:700:100 --seconds 2 --plot slo.png   # ~1.5 min
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_PY = '''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({fixed} + {per_item} * len(requests))
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
'''

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 64
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} default_queue_policy {{ max_queue_size: 4096 {timeout} }} }}
{extra}
"""

FIXED_DELAYS_MS = (0, 2, 5, 10, 20)
REFERENCE = "fixed_0ms_timeout"  # not a fixed-delay setting of the goal: printed for reference


def build_repo(root: str, fixed_s: float, per_item_s: float, slo_ms: float) -> list[str]:
    settings = [(f"fixed_{d}ms", d * 1000, "", "") for d in FIXED_DELAYS_MS]
    settings.append((REFERENCE, 0, f"default_timeout_microseconds: {int(slo_ms * 1000)}", ""))
    settings.append(("aimd", 0, "", f'parameters {{ key: "slo_ms" value: {{ string_value: "{slo_ms:g}" }} }}'))
    for name, delay_us, timeout, extra in settings:
        os.makedirs(os.path.join(root, name, "1"))
        with open(os.path.join(root, name, "1", "model.py"), "w") as f:
            f.write(MODEL_PY.format(fixed=fixed_s, per_item=per_item_s))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(CONFIG.format(name=name, delay_us=delay_us, timeout=timeout, extra=extra))
    return [s[0] for s in settings]


# ---------------------------------------------------------------- the open-loop client (its own process)
async def open_loop(port: int, model: str, rate: float, seconds: float, seed: int) -> dict:
    """Poisson arrivals at ``rate`` for ``seconds``: every request's latency (s), None for a failure."""
    from tuili.bench.perf.transport import HttpConnection, RequestFailed

    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]}).encode()
    request = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    idle: list = []
    results: list = []
    rng = random.Random(seed)

    async def one() -> None:
        conn = idle.pop() if idle else HttpConnection("127.0.0.1", port)
        t0 = time.perf_counter()
        try:
            await conn.send(request)
            results.append(time.perf_counter() - t0)
            idle.append(conn)
        except (RequestFailed, OSError, asyncio.IncompleteReadError):
            results.append(None)
            idle.append(conn)

    tasks = []
    start = time.perf_counter()
    t = start
    while t - start < seconds:
        t += rng.expovariate(rate)
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    for c in idle:
        await c.close()
    return {"latencies": results, "seconds": seconds}


def run_client(port: int, model: str, rate: float, seconds: float, seed: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--client", str(port), model, str(rate), str(seconds), str(seed)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def server_view(port: int, model: str) -> str:
    """The AIMD cap and the server-side p99 latency of the last requests (the statistics' slo_batching)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=10) as r:
        b = json.load(r)["model_stats"][0]["slo_batching"]
    return f"  server: batch cap {b['batch_cap']}, p99 {b['latency_p99_ns'] / 1e6:.1f} ms"


# ---------------------------------------------------------------- analysis
def summarize(run: dict, slo_s: float) -> dict:
    lat = run["latencies"]
    n = len(lat)
    ok = sorted(x for x in lat if x is not None)
    misses = sum(1 for x in lat if x is None or x > slo_s)
    everything = ok + [math.inf] * (n - len(ok))
    p99 = everything[max(0, math.ceil(0.99 * n) - 1)] if n else math.inf
    p99_answered = ok[max(0, math.ceil(0.99 * len(ok)) - 1)] if ok else math.inf
    return {"sent": n, "answered": len(ok), "dropped": n - len(ok), "p99_ms": p99 * 1e3,
            "p99_answered_ms": p99_answered * 1e3, "goodput": (n - misses) / run["seconds"],
            "miss_rate": misses / n if n else 1.0}


def parse_rates(text: str) -> list[float]:
    a, b, step = (float(x) for x in text.split(":"))
    out, r = [], a
    while r <= b + 1e-9:
        out.append(r)
        r += step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50:600:50", help="START:END:STEP requests/s (default 50:600:50; the "
                    "model's capacity at the default costs is 381/s)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of load per rate (default 3)")
    ap.add_argument("--slo-ms", type=float, default=200.0)
    ap.add_argument("--fixed-ms", type=float, default=40.0, help="batch cost: fixed part (default 40 ms)")
    ap.add_argument("--per-item-ms", type=float, default=2.0, help="batch cost: per request (default 2 ms)")
    ap.add_argument("--plot", default="slo.png", help="PNG of p99 and goodput against the offered rate")
    ap.add_argument("--json", help="write every point as JSON")
    ap.add_argument("--settings", help="comma-separated subset of the settings to run (a quick check; no ratio then)")
    args = ap.parse_args()

    from tuili.bench.server import start_server, stop_server
    from tuili.runtime import cpu

    rates = parse_rates(args.rates)
    slo_s = args.slo_ms / 1e3
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "repo")
        names = build_repo(repo, args.fixed_ms / 1e3, args.per_item_ms / 1e3, args.slo_ms)
        proc, ports = start_server(repo, tmp)
        try:
            if args.settings:
                names = [n for n in names if n in args.settings.split(",")]
            points: dict[str, list[dict]] = {n: [] for n in names}
            for name in names:
                run_client(ports["http"], name, rates[0], 1.0, 99)  # warm-up
                for i, rate in enumerate(rates):
                    s = summarize(run_client(ports["http"], name, rate, args.seconds, i), slo_s)
                    s["rate"] = rate
                    points[name].append(s)
                    extra = server_view(ports["http"], name) if name == "aimd" else ""
                    print(f"{name:>17} {rate:6.0f}/s  p99 {s['p99_ms']:8.1f} ms (answered {s['p99_answered_ms']:7.1f})  "
                          f"goodput {s['goodput']:6.1f}/s  "
                          f"dropped {s['dropped']}{extra}", file=sys.stderr, flush=True)
                    if s["miss_rate"] > 0.6 and len(points[name]) > 1 and points[name][-2]["miss_rate"] > 0.6:
                        break  # twice far past its knee: higher rates only take time
        finally:
            stop_server(proc)
    report(points, args, cpu.info().describe(), slo_s)


def report(points: dict[str, list[dict]], args, cpu_line: str, slo_s: float) -> None:
    print(f"CPU: {cpu_line}")
    print(f"\nmodel: batch of b requests takes {args.fixed_ms:g} + {args.per_item_ms:g}*b ms (sleep), max_batch_size 64, "
          f"1 instance; SLO p99 <= {args.slo_ms:g} ms; Poisson arrivals, {args.seconds:g} s per rate; HTTP\n")
    print("Strict: p99 over every request sent (dropped = late) within the SLO.\n"
          "Goodput: p99 of the answered requests within the SLO; the figure is requests answered in time per second.\n")
    print("| setting | strict: highest rate (req/s) | goodput there (req/s) | goodput criterion: best goodput (req/s) | "
          "at offered (req/s) | dropped there | p99 answered there (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    strict, good = {}, {}
    for name, pts in points.items():
        held = [p for p in pts if p["p99_ms"] <= args.slo_ms]
        top = max(held, key=lambda p: p["rate"]) if held else None
        ok = [p for p in pts if p["p99_answered_ms"] <= args.slo_ms]
        best = max(ok, key=lambda p: p["goodput"]) if ok else None
        strict[name] = top["goodput"] if top else 0.0
        good[name] = best["goodput"] if best else 0.0
        print(f"| {name} | {top['rate'] if top else 0:.0f} | {strict[name]:.1f} | {good[name]:.1f} | "
              f"{best['rate'] if best else 0:.0f} | {best['dropped'] if best else 0} / {best['sent'] if best else 0} | "
              f"{best['p99_answered_ms'] if best else math.nan:.1f} |")
    print()
    compared = "aimd" in good and REFERENCE in good and len(good) > 2
    for label, fig in (("goodput", good), ("strict", strict)) if compared else ():
        best = max((k for k in fig if k not in ("aimd", REFERENCE)), key=lambda k: fig[k])
        ratio = fig["aimd"] / fig[best] if fig[best] else math.inf
        ref = fig["aimd"] / fig[REFERENCE] if fig[REFERENCE] else math.inf
        goal = " (the goal: >= 1.2x)" if label == "goodput" else ""
        print(f"AIMD / best fixed-delay setting ({best}), {label} criterion: {ratio:.2f}x{goal}; "
              f"AIMD / {REFERENCE}: {ref:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(points, f, indent=1)
    plot(points, args, slo_s)


def plot(points: dict[str, list[dict]], args, slo_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pts in points.items():
        style = dict(lw=2.5, color="black") if name == "aimd" else dict(lw=1, alpha=0.8)
        rates = [p["rate"] for p in pts]
        a.plot(rates, [min(p["p99_answered_ms"], 10 * args.slo_ms) for p in pts], marker="o", ms=3, label=name, **style)
        b.plot(rates, [p["goodput"] for p in pts], marker="o", ms=3, label=name, **style)
    a.axhline(args.slo_ms, color="red", ls="--", lw=1, label="SLO")
    a.set_yscale("log")
    a.set_xlabel("offered load (requests/s)")
    a.set_ylabel("p99 latency of the answered requests (ms)")
    b.set_xlabel("offered load (requests/s)")
    b.set_ylabel("goodput: answered within the SLO (requests/s)")
    a.legend(fontsize=8)
    fig.suptitle(f"AIMD (slo_ms {args.slo_ms:g}) vs fixed max_queue_delay, batch = {args.fixed_ms:g} + {args.per_item_ms:g}*b ms")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, model, rate, seconds, seed = sys.argv[2:7]
        print(json.dumps(asyncio.run(open_loop(int(port), model, float(rate), float(seconds), int(seed)))))
    else:
        main()
