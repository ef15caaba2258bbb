"""Batch-size policies of the dynamic batcher: how large a batch may be and when to form it.

Pure functions of what is queued and what was measured (no threads, no queues here), so they are
testable on their own; the scheduler (serve/scheduler.py) asks them and does the rest.

    FixedBatching   Triton's knobs: max_batch_size, preferred_batch_size, max_queue_delay_microseconds
    SloBatching     the same, with the batch cap adapted to a latency objective (``slo_ms``) by
                    Clipper's AIMD, and never waiting past what the earliest deadline allows

AIMD (Clipper, NSDI '17): after every batch the policy looks at the p99 of the service times (batch
formed -> results back) of the last ``WINDOW`` batches. While it is within the budget and the batch
just run was full at the cap (so the cap was what limited it), the cap grows by ``ADDITIVE_STEP``;
once the p99 is over the budget the cap is cut to ``BACKOFF`` times itself and the window starts
afresh (the old, slower batches must not cut it again). The budget is ``SERVICE_SHARE`` of the
objective: a request arriving just as a batch starts waits for that batch, then runs in the next,
so two service times must fit in the objective.
"""
from __future__ import annotations

import logging
import math
from collections import deque

from tuili.backends.base import config_parameter
from tuili.errors import ConfigError

log = logging.getLogger(__name__)

#: AIMD constants (documented in docs/serving.md)
ADDITIVE_STEP = 1
BACKOFF = 0.9
WINDOW = 64
SERVICE_SHARE = 0.5
#: the batch times a request is predicted to need come from the same number of recent batches
ESTIMATE_WINDOW = WINDOW


def percentile(values, q: float) -> int:
    """Nearest-rank percentile (0 < q <= 100) of a non-empty collection."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def slo_ns(config) -> int:
    """The config's latency objective ``slo_ms`` in ns (0: none); anything but a positive number is a ConfigError."""
    raw = config_parameter(config, "slo_ms")
    if raw is None or raw == "":
        return 0
    try:
        ms = float(raw)
    except ValueError:
        ms = -1.0
    if not (0 < ms < 1e9):
        raise ConfigError(f"model {config.name!r}: parameter slo_ms is {raw!r}; give the latency objective in "
                          f"milliseconds, a positive number such as \"50\"")
    return int(ms * 1e6)


class ServiceTimes:
    """The service times (ns) of a model version's recent batches: what a queued request will need."""

    __slots__ = ("recent",)

    def __init__(self, size: int = ESTIMATE_WINDOW):
        self.recent: deque[int] = deque(maxlen=size)

    def add(self, ns: int) -> None:
        self.recent.append(ns)

    def typical(self) -> int:
        """The median batch time (0 before the first batch): a request with less time left cannot make it."""
        return percentile(self.recent, 50) if self.recent else 0


class FixedBatching:
    """Triton's dynamic batcher: batches up to ``max_batch`` rows, the largest preferred size when
    one is reached, formed at once (delay 0: everything already queued) or once the oldest request
    waited ``delay_ns``."""

    def __init__(self, max_batch: int, preferred: list[int], delay_ns: int):
        self.max_batch = max_batch
        self.preferred = preferred
        self.delay_ns = delay_ns

    @property
    def cap(self) -> int:
        """The most rows a batch may hold now."""
        return self.max_batch

    def decide(self, sizes: list[int], oldest: int, latest_start: int, now: int, stopping: bool) -> tuple[int, int]:
        """``sizes``: the rows of the requests that fit under the cap, in queue order; ``oldest``: when the
        longest-waiting request arrived; ``latest_start``: by when a batch must start for the earliest
        deadline among them to hold (0: none). Returns (n, 0): form a batch of the first n now, or
        (0, t): wait until t (monotonic ns) unless more requests arrive."""
        total = sum(sizes)
        full = total >= self.cap or bool(self.preferred and total >= self.preferred[-1])
        due = oldest + self.delay_ns
        if latest_start:
            due = min(due, latest_start)
        if full or self.delay_ns == 0 or now >= due or stopping:
            return self._preferred_cut(sizes) or len(sizes), 0
        return 0, due

    def _preferred_cut(self, sizes: list[int]) -> int:
        """The number of requests forming the largest preferred batch size, or 0."""
        acc, best = 0, 0
        for k, n in enumerate(sizes):
            acc += n
            if acc in self.preferred:
                best = k + 1
        return best

    def observe(self, rows: int, service_ns: int) -> None:
        """A batch of ``rows`` took ``service_ns`` (called with the scheduler's lock held)."""

    def describe(self) -> dict | None:
        """What the statistics report of the policy (None: nothing beyond Triton's)."""
        return None


class SloBatching(FixedBatching):
    """AIMD on the batch cap against a latency objective (see the module docstring)."""

    def __init__(self, max_batch: int, preferred: list[int], delay_ns: int, slo_ns: int, where: str = "", on_change=None):
        super().__init__(max_batch, preferred, delay_ns)
        self.where = where  # "model 'm' version 1", for the log
        self.slo_ns = slo_ns
        self.budget_ns = int(slo_ns * SERVICE_SHARE)
        self._cap = 1
        self.window: deque[int] = deque(maxlen=WINDOW)
        self.p99_ns = 0
        self.increases = self.cuts = 0
        self.on_change = on_change  # called with the policy after every batch (metrics)

    @property
    def cap(self) -> int:
        return self._cap

    def observe(self, rows: int, service_ns: int) -> None:
        self.window.append(service_ns)
        self.p99_ns = percentile(self.window, 99)
        if self.p99_ns > self.budget_ns:
            if self._cap > 1:
                new = max(1, int(self._cap * BACKOFF))
                log.info("%s: batch cap %d -> %d: p99 batch time %.1f ms over the budget of %.1f ms (slo_ms %g)",
                         self.where, self._cap, new, self.p99_ns / 1e6, self.budget_ns / 1e6, self.slo_ns / 1e6)
                self._cap = new
                self.cuts += 1
            self.window.clear()
        elif rows >= self._cap and self._cap < self.max_batch:
            self._cap = min(self.max_batch, self._cap + ADDITIVE_STEP)
            self.increases += 1
            log.debug("%s: batch cap -> %d: p99 batch time %.1f ms within %.1f ms", self.where, self._cap, self.p99_ns / 1e6, self.budget_ns / 1e6)
        if self.on_change is not None:
            self.on_change(self)

    def describe(self) -> dict:
        return {"slo_ms": self.slo_ns / 1e6, "batch_cap": self._cap, "max_batch_size": self.max_batch,
                "batch_time_p99_ns": self.p99_ns, "batch_time_budget_ns": self.budget_ns,
                "cap_increases": self.increases, "cap_cuts": self.cuts}
