"""Per-model statistics (Triton's statistics extension) and Prometheus metrics (Triton's names).

One ``ModelStats`` per loaded model version. The scheduler's worker threads record queue and
compute times; the core records request success/failure and end-to-end duration.
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LABELS = ("model", "version")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, float("inf"))


class Metrics:
    """The Prometheus metric families of one server (own registry, so several servers can coexist)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.success = Counter("nv_inference_request_success", "Number of successful inference requests, all batch sizes", _LABELS, registry=r)
        self.failure = Counter("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", _LABELS, registry=r)
        self.count = Counter("nv_inference_count", "Number of inferences performed (a batch of n counts n)", _LABELS, registry=r)
        self.exec_count = Counter("nv_inference_exec_count", "Number of model executions performed (a batch counts 1)", _LABELS, registry=r)
        self.request_us = Counter("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds", _LABELS, registry=r)
        self.queue_us = Counter("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds", _LABELS, registry=r)
        self.input_us = Counter("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds", _LABELS, registry=r)
        self.infer_us = Counter("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds", _LABELS, registry=r)
        self.output_us = Counter("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds", _LABELS, registry=r)
        self.pending = Gauge("nv_inference_pending_request_count", "Instantaneous number of pending requests awaiting execution", _LABELS, registry=r)
        self.latency = Histogram("tuili_inference_request_latency_seconds", "End-to-end server latency of successful requests", _LABELS,
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_latency = Histogram("tuili_inference_queue_latency_seconds", "Time requests wait in the scheduler queue", _LABELS,
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tuili_inference_batch_size", "Batch size of model executions", _LABELS,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, float("inf")), registry=r)

    def remove(self, model: str, version: str) -> None:
        for m in (self.success, self.failure, self.count, self.exec_count, self.request_us, self.queue_us, self.input_us,
                  self.infer_us, self.output_us, self.pending, self.latency, self.queue_latency, self.batch_size):
            try:
                m.remove(model, version)
            except KeyError:
                pass


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
        lv = (model, version)
        self.m = metrics
        self._p_success = metrics.success.labels(*lv)
        self._p_failure = metrics.failure.labels(*lv)
        self._p_count = metrics.count.labels(*lv)
        self._p_exec = metrics.exec_count.labels(*lv)
        self._p_request = metrics.request_us.labels(*lv)
        self._p_queue = metrics.queue_us.labels(*lv)
        self._p_input = metrics.input_us.labels(*lv)
        self._p_infer = metrics.infer_us.labels(*lv)
        self._p_output = metrics.output_us.labels(*lv)
        self.p_pending = metrics.pending.labels(*lv)
        self._p_latency = metrics.latency.labels(*lv)
        self._p_qlat = metrics.queue_latency.labels(*lv)
        self._p_bs = metrics.batch_size.labels(*lv)

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
        self._p_exec.inc()
        self._p_count.inc(batch_size)
        self._p_bs.observe(batch_size)
        qus = sum(queue_ns) / 1000.0
        self._p_queue.inc(qus)
        for q in queue_ns:
            self._p_qlat.observe(q / 1e9)
        self._p_input.inc(input_ns * n_requests / 1000.0)
        self._p_infer.inc(infer_ns * n_requests / 1000.0)
        self._p_output.inc(output_ns * n_requests / 1000.0)

    # called from the event loop -------------------------------------------------------------
    def record_request(self, ok: bool, duration_ns: int) -> None:
        with self._lock:
            (self.success if ok else self.fail).add(duration_ns)
            if ok:
                self.last_inference_ms = int(time.time() * 1000)
        if ok:
            self._p_success.inc()
            self._p_request.inc(duration_ns / 1000.0)
            self._p_latency.observe(duration_ns / 1e9)
        else:
            self._p_failure.inc()

    def record_ensemble(self, batch_size: int) -> None:
        """Ensembles have no executions of their own; count the inferences they run."""
        with self._lock:
            self.inference_count += batch_size
            self.execution_count += 1
        self._p_count.inc(batch_size)
        self._p_exec.inc()

    def json(self) -> dict:
        with self._lock:
            return {
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
