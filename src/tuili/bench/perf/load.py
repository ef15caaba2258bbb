"""Load generation and measurement windows, in the manner of Triton's perf_analyzer.

Concurrency mode keeps N requests in flight (each of N workers sends its next request as soon as
the previous one is answered); request-rate mode sends on a schedule (constant or Poisson
intervals) whatever the answers do. The load runs without pause while consecutive measurement
windows are taken; a sweep point is *stable* once the last three windows' throughput and p99 lie
within ``stability`` of their mean, and its figures are those three windows together.
"""
from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from tuili.bench.perf.transport import RequestFailed

Send = Callable[[], Awaitable[object]]

_STAT_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Window:
    seconds: float
    latencies: list[float]  # seconds, of the requests answered in the window
    errors: int
    client_cpu: float  # CPU seconds this process used in the window
    server: dict | None  # the model's statistics at the window's end (Triton's statistics JSON)


@dataclass
class Point:
    """The figures of one sweep point (one concurrency or one request rate)."""
    mode: str
    level: float
    batch: int
    windows: list[Window]
    stable: bool
    server_before: dict | None = None
    errors_seen: list[str] = field(default_factory=list)

    @property
    def _lat_ms(self) -> np.ndarray:
        return np.array([x for w in self.windows for x in w.latencies]) * 1e3

    @property
    def requests(self) -> int:
        return sum(len(w.latencies) for w in self.windows)

    @property
    def seconds(self) -> float:
        return sum(w.seconds for w in self.windows)

    @property
    def throughput(self) -> float:
        """Inferences per second (requests times batch size), as perf_analyzer counts them."""
        return self.requests * self.batch / self.seconds if self.seconds else 0.0

    def latency(self, q: float) -> float:
        lat = self._lat_ms
        return float(np.percentile(lat, q)) if lat.size else math.nan

    @property
    def avg_latency(self) -> float:
        lat = self._lat_ms
        return float(lat.mean()) if lat.size else math.nan

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.windows)

    @property
    def client_cpu_percent(self) -> float:
        """The load generator's CPU use, in percent of one core."""
        return 100.0 * sum(w.client_cpu for w in self.windows) / self.seconds if self.seconds else 0.0

    def server_breakdown(self) -> dict[str, float] | None:
        """Mean microseconds per request the server spent queued, reading inputs, computing and
        writing outputs over the point's windows (from the statistics extension)."""
        if self.server_before is None or self.windows[-1].server is None:
            return None
        a, b = self.server_before["inference_stats"], self.windows[-1].server["inference_stats"]
        n = int(b["success"]["count"]) - int(a["success"]["count"])
        if n <= 0:
            return None
        out = {k: (int(b[k]["ns"]) - int(a[k]["ns"])) / n / 1e3 for k in _STAT_FIELDS}
        out["request"] = (int(b["success"]["ns"]) - int(a["success"]["ns"])) / n / 1e3
        execs = int(self.windows[-1].server["execution_count"]) - int(self.server_before["execution_count"])
        infers = int(self.windows[-1].server["inference_count"]) - int(self.server_before["inference_count"])
        out["batch"] = infers / execs if execs else math.nan
        return out


class Recorder:
    """Latencies and errors as requests finish; a window takes what arrived since the last one."""

    def __init__(self):
        self.latencies: list[float] = []
        self.errors = 0
        self.messages: list[str] = []

    async def timed(self, send: Send) -> None:
        t0 = time.perf_counter()
        try:
            await send()
        except (RequestFailed, OSError, asyncio.IncompleteReadError) as e:
            self.errors += 1
            if len(self.messages) < 5:
                self.messages.append(str(e) or type(e).__name__)
            return
        self.latencies.append(time.perf_counter() - t0)

    def take(self) -> tuple[list[float], int]:
        lat, err = self.latencies, self.errors
        self.latencies, self.errors = [], 0
        return lat, err


async def _concurrency_load(make_send: Callable[[int], Send], n: int, rec: Recorder, stop: asyncio.Event) -> None:
    async def worker(i: int) -> None:
        send = make_send(i)
        while not stop.is_set():
            await rec.timed(send)
    await asyncio.gather(*(worker(i) for i in range(n)))


async def _rate_load(make_send: Callable[[int], Send], rate: float, poisson: bool, max_in_flight: int,
                     rec: Recorder, stop: asyncio.Event, seed: int) -> None:
    """Sends at ``rate`` requests/s; each in-flight request uses its own sender slot (a connection
    for HTTP), at most ``max_in_flight`` at once (a send that finds none free counts as an error:
    the server is not keeping up with the offered rate)."""
    rng = np.random.default_rng(seed)
    free = list(range(max_in_flight))
    senders: dict[int, Send] = {}
    tasks: set[asyncio.Task] = set()

    async def one(slot: int) -> None:
        try:
            await rec.timed(senders[slot])
        finally:
            free.append(slot)

    loop = asyncio.get_running_loop()
    next_t = loop.time()
    while not stop.is_set():
        next_t += rng.exponential(1.0 / rate) if poisson else 1.0 / rate
        delay = next_t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if not free:
            rec.errors += 1
            if len(rec.messages) < 5:
                rec.messages.append(f"more than {max_in_flight} requests in flight: the server does not keep up with {rate:g}/s")
            continue
        slot = free.pop()
        if slot not in senders:
            senders[slot] = make_send(slot)
        t = asyncio.create_task(one(slot))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


@dataclass
class Settings:
    window_s: float = 5.0
    stability: float = 0.10
    max_windows: int = 10
    warmup_s: float = 2.0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stable(windows: list[Window], stability: float) -> bool:
    if len(windows) < 3:
        return False
    last = windows[-3:]
    for values in ([len(w.latencies) / w.seconds for w in last],
                   [float(np.percentile(w.latencies, 99)) if w.latencies else math.inf for w in last]):
        mean = sum(values) / 3
        if not math.isfinite(mean) or mean <= 0 or any(abs(v - mean) > stability * mean for v in values):
            return False
    return True


async def measure(mode: str, level: float, batch: int, make_send: Callable[[int], Send], settings: Settings,
                  stats: Callable[[], Awaitable[dict | None]], *, poisson: bool = False, max_in_flight: int = 256,
                  seed: int = 0) -> Point:
    """Run the load at one level (concurrency or request rate) until stable or ``max_windows``."""
    rec, stop = Recorder(), asyncio.Event()
    if mode == "concurrency":
        load = asyncio.create_task(_concurrency_load(make_send, int(level), rec, stop))
    else:
        load = asyncio.create_task(_rate_load(make_send, level, poisson, max_in_flight, rec, stop, seed))
    try:
        await asyncio.sleep(settings.warmup_s)
        rec.take()
        windows: list[Window] = []
        befores: list[dict | None] = [await stats()]
        for _ in range(settings.max_windows):
            t0, c0 = time.perf_counter(), _cpu()
            await asyncio.sleep(settings.window_s)
            lat, err = rec.take()
            windows.append(Window(time.perf_counter() - t0, lat, err, _cpu() - c0, await stats()))
            befores.append(windows[-1].server)
            if load.done():
                break
            if _stable(windows, settings.stability):
                break
    finally:
        stop.set()
        await load
    last = windows[-3:]
    return Point(mode, level, batch, last, _stable(windows, settings.stability),
                 server_before=befores[len(windows) - len(last)], errors_seen=rec.messages)
