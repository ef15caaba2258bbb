"""Per-model statistics (Triton's statistics extension) and Prometheus metrics (Triton's names).

One ``ModelStats`` per loaded model version. The scheduler's worker threads record queue and
compute times; the server records request success/failure and end-to-end duration.
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from tuili.serve.canary import CanaryMetrics

_LABELS = ("model", "version")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, float("inf"))


# Triton's metric families: (name, type, help, ModelStats -> value)
_FAMILIES = [
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes", lambda s: s.success.count),
    ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes", lambda s: s.fail.count),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "counter", "Number of model executions performed (does not include cached requests)", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds", lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "counter", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output.ns // 1000),
    ("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution per-model",
     lambda s: s.pending),
]


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """The metrics of one server. Triton's ``nv_*`` families are rendered from the ModelStats
    counters exactly as Triton names them (no ``_total`` suffix); the latency histograms are
    prometheus_client Histograms in this server's own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self.latency = Histogram("tuili_inference_request_latency_seconds", "End-to-end server latency of successful requests", _LABELS,
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_latency = Histogram("tuili_inference_queue_latency_seconds", "Time requests wait in the scheduler queue", _LABELS,
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tuili_inference_batch_size", "Batch size of model executions", _LABELS,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, float("inf")), registry=r)
        # SLO-adaptive batching (serve/batching.py): only models with slo_ms and dynamic batching
        self.batch_cap = Gauge("tuili_batch_cap", "Current batch-size cap set by SLO-adaptive batching (AIMD)", _LABELS,
                               registry=r)
        self.batch_time_p99 = Gauge("tuili_batch_time_p99_seconds", "p99 batch service time over the AIMD window",
                                    _LABELS, registry=r)
        self.slo = Gauge("tuili_slo_seconds", "Latency objective (slo_ms) of the model", _LABELS, registry=r)
        self.canary = CanaryMetrics(r)

    def add(self, stats: ModelStats) -> None:
        self._stats[(stats.model, stats.version)] = stats

    def remove(self, stats: ModelStats) -> None:
        """Forget a retired version's stats (unless a reload already replaced them)."""
        model, version = stats.model, stats.version
        if self._stats.get((model, version)) is not stats:
            return
        del self._stats[(model, version)]
        for m in (self.latency, self.queue_latency, self.batch_size, self.batch_cap, self.batch_time_p99, self.slo):
            try:
                m.remove(model, version)
            except KeyError:
                pass

    def exposition(self) -> bytes:
        """Prometheus text format of everything."""
        stats = [self._stats[k] for k in sorted(self._stats)]
        lines = []
        for name, typ, help_, get in _FAMILIES:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {typ}")
            for s in stats:
                lines.append(f'{name}{{model="{_esc(s.model)}",version="{_esc(s.version)}"}} {get(s)}')
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)


class _Dur:
    __slots__ = ("count", "ns")

    def __init__(self):
        self.count = 0
        self.ns = 0

    def add(self, ns: int, n: int = 1):
        self.count += n
        self.ns += ns

    def json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """Counters of one model version, in Triton's statistics JSON shape, mirrored to Prometheus."""

    def __init__(self, model: str, version: str, metrics: Metrics):
        self.model, self.version = model, version
        self._lock = threading.Lock()
        self.success, self.fail, self.queue = _Dur(), _Dur(), _Dur()
        self.compute_input, self.compute_infer, self.compute_output = _Dur(), _Dur(), _Dur()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batch: dict[int, list[_Dur]] = {}
        self.pending = 0
        self.batching = None  # an SLO-adaptive batch policy, reported in json() and the metrics
        self._metrics = metrics
        lv = (model, version)
        self._p_latency = metrics.latency.labels(*lv)
        self._p_qlat = metrics.queue_latency.labels(*lv)
        self._p_bs = metrics.batch_size.labels(*lv)
        metrics.add(self)

    # called from worker threads -------------------------------------------------------------
    def record_execution(self, batch_size: int, n_requests: int, queue_ns: list[int], input_ns: int, infer_ns: int, output_ns: int) -> None:
        with self._lock:
            self.execution_count += 1
            self.inference_count += batch_size
            b = self.batch.get(batch_size)
            if b is None:
                b = self.batch[batch_size] = [_Dur(), _Dur(), _Dur()]
            b[0].add(input_ns)
            b[1].add(infer_ns)
            b[2].add(output_ns)
            for q in queue_ns:
                self.queue.add(q)
            # Triton charges each request of a batch the batch's compute time.
            self.compute_input.add(input_ns * n_requests, n_requests)
            self.compute_infer.add(infer_ns * n_requests, n_requests)
            self.compute_output.add(output_ns * n_requests, n_requests)
        self._p_bs.observe(batch_size)
        for q in queue_ns:
            self._p_qlat.observe(q / 1e9)

    def record_batching(self, policy) -> None:
        """The batch policy adapted its cap (serve/batching.SloBatching.observe, the scheduler's lock held)."""
        if self.batching is None:
            self.batching = policy
            self._metrics.slo.labels(self.model, self.version).set(policy.slo_ns / 1e9)
        self._metrics.batch_cap.labels(self.model, self.version).set(policy.cap)
        self._metrics.batch_time_p99.labels(self.model, self.version).set(policy.p99_ns / 1e9)

    # called from the event loop -------------------------------------------------------------
    def record_request(self, ok: bool, duration_ns: int) -> None:
        with self._lock:
            (self.success if ok else self.fail).add(duration_ns)
            if ok:
                self.last_inference_ms = int(time.time() * 1000)
        if ok:
            self._p_latency.observe(duration_ns / 1e9)

    def request(self) -> _RequestTimer:
        """``with stats.request():`` records one request, failed if the block raises, and its duration."""
        return _RequestTimer(self)

    def record_ensemble(self, batch_size: int) -> None:
        """Ensembles have no executions of their own; count the inferences they run."""
        with self._lock:
            self.inference_count += batch_size
            self.execution_count += 1

    def json(self) -> dict:
        with self._lock:
            out = {
                "name": self.model,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.json(), "fail": self.fail.json(), "queue": self.queue.json(),
                    "compute_input": self.compute_input.json(), "compute_infer": self.compute_infer.json(),
                    "compute_output": self.compute_output.json(),
                    "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {"batch_size": bs, "compute_input": d[0].json(), "compute_infer": d[1].json(), "compute_output": d[2].json()}
                    for bs, d in sorted(self.batch.items())
                ],
                "memory_usage": [],
            }
        if self.batching is not None:  # tuili's own (gRPC clients, bound to Triton's schema, do not see it)
            out["slo_batching"] = self.batching.describe()
        return out


class _RequestTimer:
    __slots__ = ("stats", "t0")

    def __init__(self, stats: ModelStats):
        self.stats = stats

    def __enter__(self) -> None:
        self.t0 = time.monotonic_ns()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stats.record_request(exc_type is None, time.monotonic_ns() - self.t0)
        return False
