"""Batch-size policies of the dynamic batcher: how large a batch may be and when to form it.

Pure functions of what is queued and what was measured (no threads, no queues here), so they are
testable on their own; the scheduler (serve/scheduler.py) asks them and does the rest.

    BatchTimes      the model's batch-latency model: t(b) = a + c*b fitted to its recent batches
    FixedBatching   Triton's knobs: max_batch_size, preferred_batch_size, max_queue_delay_microseconds
    SloBatching     the same, with the batch cap adapted to a latency objective (``slo_ms``) by
                    Clipper's AIMD, and never waiting past what the earliest deadline allows
    hopeless        how many of the oldest queued requests an SLO model gives up so the rest make it

An SLO model's requests carry the objective as their deadline. When a batch is formed the scheduler
takes everything queued (up to the cap), in earliest-deadline order, and asks ``hopeless`` how many
of the oldest to drop: they go while the batch of the rest would not finish (by the latency model)
before the earliest deadline in it. At a light load nothing is dropped; under overload the batch
is the largest one whose requests all make it, so the goodput holds at the model's best instead of
every request ending late.

A batch is planned to finish ``1 - TARGET_SHARE`` of the objective before the deadline: the time the
server spends on a request outside the scheduler (parsing, the response) is not in its latency.

AIMD (Clipper, NSDI '17) guards what the latency model cannot see: after every batch the policy
takes the p99 of the latencies (queued -> answered, server side) of the last ``WINDOW`` requests.
While it is within the target (``TARGET_SHARE`` of the objective) and the batch just run was full at the cap, the cap grows by
``ADDITIVE_STEP``; once it is over, the cap is cut to ``BACKOFF`` times itself and the window starts
afresh (the requests that caused the cut must not cut it again). The cap starts at
``max_batch_size``: the deadlines already keep batches as small as the requests need, so a cap
that starts low only makes the queue grow while it climbs.
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
WINDOW = 256  # request latencies
#: an SLO model's batches are planned to finish by this share of a request's time (its deadline from
#: now); the rest is for what the scheduler does not see: parsing the request, sending the response
TARGET_SHARE = 0.9
#: the batch-latency model is fitted to this many recent batches
ESTIMATE_WINDOW = 64
#: the model predicts a batch's time as the fit plus this percentile of how far batches ran over it
SPREAD_PERCENTILE = 90


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


class BatchTimes:
    """The rows and times (ns) of a model version's recent batches, and what a batch of b rows will take."""

    __slots__ = ("recent", "_fit")

    def __init__(self, size: int = ESTIMATE_WINDOW):
        self.recent: deque[tuple[int, int]] = deque(maxlen=size)
        self._fit: tuple[float, float, int, int] | None = None  # (a, c, spread, largest rows), refitted lazily

    def add(self, rows: int, ns: int) -> None:
        self.recent.append((rows, ns))
        self._fit = None

    def typical(self) -> int:
        """The median batch time (0 before the first batch): a request with less time left cannot make it."""
        return percentile([t for _, t in self.recent], 50) if self.recent else 0

    def predict(self, rows: int) -> int:
        """What a batch of ``rows`` will take (0 before the first batch): the least-squares line t = a + c*b
        through the recent batches, plus the SPREAD_PERCENTILE of how far they ran over it. Above the largest
        batch seen a batch is taken to cost as much as that one: the gain of batching is explored, not
        assumed away (a model that believed large batches slow would drop requests and never try one)."""
        if not self.recent:
            return 0
        if self._fit is None:
            self._fit = self._refit()
        a, c, spread, largest = self._fit
        return int(max(a + c * min(rows, largest), 0.0)) + spread

    def _refit(self) -> tuple[float, float, int, int]:
        n = len(self.recent)
        mb = sum(b for b, _ in self.recent) / n
        mt = sum(t for _, t in self.recent) / n
        var = sum((b - mb) ** 2 for b, _ in self.recent)
        c = max(0.0, sum((b - mb) * (t - mt) for b, t in self.recent) / var) if var else 0.0
        a = mt - c * mb
        spread = percentile([max(0, int(t - (a + c * b))) for b, t in self.recent], SPREAD_PERCENTILE)
        return a, c, spread, max(b for b, _ in self.recent)


def hopeless(rows: list[int], deadlines: list[int], cap: int, now: int, predict) -> int:
    """How many requests at the front of the queue to drop so the rest make their deadlines.

    ``rows`` and ``deadlines`` (monotonic ns, 0 = none) are the queued requests in service order;
    ``predict(b)`` is the time a batch of b rows takes. The oldest go while the next batch, formed from
    the rest (everything up to ``cap`` rows), would not finish before the earliest deadline in it; a
    request without a deadline is never dropped, and stops the search."""
    n, end, total = len(rows), 0, 0
    earliest: deque[int] = deque()  # indices in the window [i, end) by rising deadline: [0] is its earliest
    for i in range(n):
        if not deadlines[i]:
            return i
        while end < n and (not total or total + rows[end] <= cap):  # the batch of the rest, up to cap rows
            total += rows[end]
            if deadlines[end]:
                while earliest and deadlines[earliest[-1]] >= deadlines[end]:
                    earliest.pop()
                earliest.append(end)
            end += 1
        if now + predict(total) <= deadlines[earliest[0]]:
            return i
        total -= rows[i]  # drop the oldest
        if earliest[0] == i:
            earliest.popleft()
    return n


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

    def observe(self, rows: int, service_ns: int, latencies_ns: list[int] = ()) -> None:
        """A batch of ``rows`` took ``service_ns``, its requests waited and ran ``latencies_ns`` (called with the
        scheduler's lock held)."""

    def describe(self) -> dict | None:
        """What the statistics report of the policy (None: nothing beyond Triton's)."""
        return None


class SloBatching(FixedBatching):
    """AIMD on the batch cap against a latency objective (see the module docstring)."""

    def __init__(self, max_batch: int, preferred: list[int], delay_ns: int, slo_ns: int, times: BatchTimes,
                 where: str = "", on_change=None):
        super().__init__(max_batch, preferred, delay_ns)
        self.where = where  # "model 'm' version 1", for the log
        self.slo_ns = slo_ns
        self.target_ns = int(slo_ns * TARGET_SHARE)  # the server-side latency AIMD holds
        self.times = times  # the scheduler's batch-latency model
        self._cap = max_batch
        self.window: deque[int] = deque(maxlen=WINDOW)  # request latencies (ns)
        self.latency_p99_ns = 0
        self.increases = self.cuts = 0
        self.on_change = on_change  # called with the policy after every batch (metrics)

    @property
    def cap(self) -> int:
        return self._cap

    def batch_ns(self, rows: int) -> int:
        """How long before a deadline a batch of ``rows`` must start: its predicted time plus the margin."""
        return self.times.predict(rows) + self.slo_ns - self.target_ns

    @property
    def p99_ns(self) -> int:
        """The p99 of the recent batch times (the metric tuili_batch_time_p99_seconds)."""
        return percentile([t for _, t in self.times.recent], 99) if self.times.recent else 0

    def observe(self, rows: int, service_ns: int, latencies_ns: list[int] = ()) -> None:
        """A batch of ``rows`` took ``service_ns``; its requests' latencies (queued -> answered) were ``latencies_ns``."""
        self.window.extend(latencies_ns)
        if not self.window:
            return
        self.latency_p99_ns = percentile(self.window, 99)
        if self.latency_p99_ns > self.target_ns:
            if self._cap > 1:
                new = max(1, int(self._cap * BACKOFF))
                log.info("%s: batch cap %d -> %d: p99 latency %.1f ms over the target of %.1f ms (slo_ms %g)",
                         self.where, self._cap, new, self.latency_p99_ns / 1e6, self.target_ns / 1e6, self.slo_ns / 1e6)
                self._cap = new
                self.cuts += 1
            self.window.clear()
        elif rows >= self._cap and self._cap < self.max_batch:
            self._cap = min(self.max_batch, self._cap + ADDITIVE_STEP)
            self.increases += 1
            log.debug("%s: batch cap -> %d: p99 latency %.1f ms within %.1f ms", self.where, self._cap,
                      self.latency_p99_ns / 1e6, self.target_ns / 1e6)
        if self.on_change is not None:
            self.on_change(self)

    def describe(self) -> dict:
        return {"slo_ms": self.slo_ns / 1e6, "batch_cap": self._cap, "max_batch_size": self.max_batch,
                "latency_p99_ns": self.latency_p99_ns, "latency_target_ns": self.target_ns, "batch_time_p99_ns": self.p99_ns,
                "batch_time_1_ns": self.times.predict(1), "batch_time_max_ns": self.times.predict(self.max_batch),
                "cap_increases": self.increases, "cap_cuts": self.cuts}
