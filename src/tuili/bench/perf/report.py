"""`tuili perf` results as rows: a markdown table, CSV, JSON and a latency-throughput plot."""
from __future__ import annotations

import csv
import json
import math

from tuili.bench.perf.load import Point
from tuili.bench.perf.run import Result

COLUMNS = ["level", "throughput_infer_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms", "requests", "errors",
           "client_cpu_pct", "server_queue_us", "server_input_us", "server_infer_us", "server_output_us",
           "server_request_us", "server_batch", "stable"]


def row(p: Point) -> dict:
    s = p.server_breakdown() or {}
    return {"level": p.level, "throughput_infer_s": p.throughput, "p50_ms": p.latency(50), "p90_ms": p.latency(90),
            "p95_ms": p.latency(95), "p99_ms": p.latency(99), "avg_ms": p.avg_latency, "requests": p.requests,
            "errors": p.errors, "client_cpu_pct": p.client_cpu_percent,
            "server_queue_us": s.get("queue", math.nan), "server_input_us": s.get("compute_input", math.nan),
            "server_infer_us": s.get("compute_infer", math.nan), "server_output_us": s.get("compute_output", math.nan),
            "server_request_us": s.get("request", math.nan), "server_batch": s.get("batch", math.nan),
            "stable": p.stable}


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def markdown(result: Result) -> str:
    o = result.options
    level = "concurrency" if o.mode == "concurrency" else "request rate (/s)"
    head = [level, "infer/s", "p50 ms", "p90 ms", "p99 ms", "errors", "client CPU %",
            "server queue µs", "server infer µs", "server request µs", "batch", "stable"]
    keys = ["level", "throughput_infer_s", "p50_ms", "p90_ms", "p99_ms", "errors", "client_cpu_pct",
            "server_queue_us", "server_infer_us", "server_request_us", "server_batch", "stable"]
    lines = [f"model {result.model.name!r} over {o.protocol}, batch {o.batch}, {result.payload_bytes} input bytes "
             f"per request" + (", inputs and outputs in system shared memory" if o.shared_memory == "system" else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in result.points:
        r = row(p)
        lines.append(f"| {p.level:g} | " + " | ".join(_fmt(r[k]) for k in keys[1:]) + " |")
    for p in result.points:
        for m in p.errors_seen:
            lines.append(f"\nat {level} {p.level:g}: {m}")
    if result.stopped_early:
        lines.append(f"\nstopped early: {result.stopped_early}")
    return "\n".join(lines)


def write_csv(result: Result, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for p in result.points:
            w.writerow(row(p))


def write_json(result: Result, path: str) -> None:
    o = result.options
    doc = {"model": result.model.name, "protocol": o.protocol, "batch": o.batch, "mode": o.mode,
           "shared_memory": o.shared_memory, "payload_bytes": result.payload_bytes,
           "points": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row(p).items()}
                      for p in result.points]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def plot(results: list[Result], path: str) -> None:
    """p50 and p99 latency against throughput, one line pair per result (e.g. per protocol)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        rows = [row(p) for p in res.points]
        x = [r["throughput_infer_s"] for r in rows]
        label = f"{res.model.name} {res.options.protocol}"
        ax.plot(x, [r["p50_ms"] for r in rows], "o-", label=f"{label} p50")
        ax.plot(x, [r["p99_ms"] for r in rows], "s--", label=f"{label} p99")
        for xi, r in zip(x, rows):
            ax.annotate(f"{r['level']:g}", (xi, r["p99_ms"]), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency vs throughput (labels: load level)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
