"""Canary releases: a share of a model's traffic goes to a new version, which is rolled back
automatically when it does worse than the stable version.

Configured with the model's parameters (the versions themselves are loaded by ``version_policy``):

    canary_version         the canary, one of the loaded versions; the stable version is the newest
                           other loaded version
    canary_weight          percent (0-100) of the requests that name no version sent to the canary
    canary_shadow          "true": the stable version answers every request and the canary gets
                           *copies* of canary_weight percent of them; its answers are discarded,
                           compared with the stable version's in the metrics
    canary_min_requests    requests each side needs in the comparison window before a decision (100)
    canary_error_margin    roll back when the canary's error rate exceeds the stable's by more (0.05)
    canary_latency_margin  roll back when the canary's p99 exceeds the stable's by more than this
                           fraction of it (0.5: 50% slower)

Requests that name a version bypass the split and are not compared. A rollback is final until the
model is loaded again: every request then goes to the stable version, and shadowing stops. Every
decision is logged and counted in the Prometheus metrics (``tuili_canary_*``).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from tuili.backends.base import config_parameter
from tuili.errors import ConfigError
from tuili.serve.batching import percentile

log = logging.getLogger(__name__)

PARAMETERS = ("canary_version", "canary_weight", "canary_shadow", "canary_min_requests", "canary_error_margin",
              "canary_latency_margin")
#: the comparison window holds each side's last max(min_requests, WINDOW) outcomes
WINDOW = 1000
#: the rollback rules are checked every CHECK_EVERY canary outcomes (a p99 sorts the window)
CHECK_EVERY = 10


@dataclass(frozen=True)
class CanarySettings:
    version: str
    weight: float  # share 0..1
    shadow: bool = False
    min_requests: int = 100
    error_margin: float = 0.05
    latency_margin: float = 0.5


def canary_settings(config) -> CanarySettings | None:
    """The config's canary parameters (None when it has no canary_version); a bad value is a ConfigError."""
    name = config.name
    raw = {k: config_parameter(config, k) for k in PARAMETERS}
    raw = {k: v for k, v in raw.items() if v not in (None, "")}
    if not raw:
        return None
    if "canary_version" not in raw:
        raise ConfigError(f"model {name!r}: parameters {', '.join(sorted(raw))} need canary_version, the version that "
                          f"gets the canary traffic")

    def number(key: str, default, kind, low, high):
        if key not in raw:
            return default
        try:
            v = kind(raw[key])
        except ValueError:
            v = None
        if v is None or not low <= v <= high:
            raise ConfigError(f"model {name!r}: parameter {key} is {raw[key]!r}; give a number from {low} to {high}")
        return v

    version = raw["canary_version"]
    if not version.isdigit() or int(version) <= 0:
        raise ConfigError(f"model {name!r}: parameter canary_version is {version!r}; give a version number such as \"2\"")
    shadow = raw.get("canary_shadow", "false").strip().lower()
    if shadow not in ("true", "false", "1", "0"):
        raise ConfigError(f"model {name!r}: parameter canary_shadow is {raw['canary_shadow']!r}; use \"true\" or \"false\"")
    if "canary_weight" not in raw:
        raise ConfigError(f"model {name!r}: canary_version needs canary_weight, the percent of traffic (0-100) the canary gets")
    return CanarySettings(str(int(version)), number("canary_weight", 0.0, float, 0, 100) / 100, shadow in ("true", "1"),
                          number("canary_min_requests", 100, int, 1, 10**9),
                          number("canary_error_margin", 0.05, float, 0, 1),
                          number("canary_latency_margin", 0.5, float, 0, 1e6))


class CanaryMetrics:
    """The ``tuili_canary_*`` families of one server's registry."""

    def __init__(self, registry: CollectorRegistry):
        labels = ("model", "version", "role")
        self.requests = Counter("tuili_canary_requests", "Requests routed by a canary split, by the role of the version "
                                "that ran them (stable, canary, shadow)", labels, registry=registry)
        self.errors = Counter("tuili_canary_errors", "Failed requests of a canary split, by role", labels, registry=registry)
        self.p99 = Gauge("tuili_canary_p99_seconds", "p99 latency of successful requests in the comparison window, by role",
                         labels, registry=registry)
        self.error_rate = Gauge("tuili_canary_error_rate", "Error rate in the comparison window, by role", labels,
                                registry=registry)
        self.weight = Gauge("tuili_canary_weight", "Share of the requests naming no version that the canary version gets "
                            "(copies of them in shadow mode); 0 after a rollback", ("model", "version"), registry=registry)
        self.rollbacks = Counter("tuili_canary_rollbacks", "Automatic rollbacks of a canary version, by reason",
                                 ("model", "version", "reason"), registry=registry)
        self.mismatches = Counter("tuili_canary_shadow_mismatches", "Shadow answers whose outputs differ from the stable "
                                  "version's", ("model", "version"), registry=registry)
        self._used: set[tuple] = set()  # (family, labels) set so far, to remove them with their model

    def __call__(self, family, *labels):
        """``family.labels(*labels)``, remembered for ``forget``."""
        self._used.add((family, labels))
        return family.labels(*labels)

    def forget(self, model: str) -> None:
        """Remove every series of ``model`` (its canary was replaced or the model unloaded)."""
        for family, labels in [u for u in self._used if u[1][0] == model]:
            self._used.discard((family, labels))
            try:
                family.remove(*labels)
            except KeyError:
                pass


class _Side:
    """Recent outcomes of one side of the comparison."""

    def __init__(self, size: int):
        self.outcomes: deque[tuple[bool, int]] = deque(maxlen=size)

    def error_rate(self) -> float:
        return sum(1 for ok, _ in self.outcomes if not ok) / len(self.outcomes) if self.outcomes else 0.0

    def p99_ns(self) -> int:
        ok = [ns for good, ns in self.outcomes if good]
        return percentile(ok, 99) if ok else 0


class _Watch:
    """``with canary.watch(role):`` records one request's outcome and duration for ``role``."""

    __slots__ = ("canary", "role", "t0")

    def __init__(self, canary: Canary, role: str):
        self.canary, self.role = canary, role

    def __enter__(self) -> None:
        self.t0 = time.monotonic_ns()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.canary.record(self.role, exc_type is None, time.monotonic_ns() - self.t0)
        return False


class Canary:
    """The split of one model between its stable and canary versions (ModelVersion objects)."""

    def __init__(self, model: str, settings: CanarySettings, stable, canary, metrics: CanaryMetrics):
        self.model, self.settings = model, settings
        self.stable, self.canary = stable, canary
        self.metrics = metrics
        self.rolled_back = ""  # the reason, once rolled back
        size = max(settings.min_requests, WINDOW)
        self.sides = {"stable": _Side(size), "canary": _Side(size)}
        self._since_check = 0
        self._shadows: set[asyncio.Task] = set()
        metrics(metrics.weight, model, canary.version).set(settings.weight)
        mode = "copies of" if settings.shadow else ""
        log.info("model %s: canary version %s gets %s%.3g%% of the requests naming no version, stable version %s the rest; "
                 "rollback when its error rate exceeds the stable's by %.3g or its p99 by %.3g%% (after %d requests each)",
                 model, canary.version, mode + " " if mode else "", settings.weight * 100, stable.version,
                 settings.error_margin, settings.latency_margin * 100, settings.min_requests)

    # ------------------------------------------------------------------ routing
    def pick(self):
        """(the version to run a request naming no version, the context that records its outcome)."""
        to_canary = not self.rolled_back and not self.settings.shadow and random.random() < self.settings.weight
        role = "canary" if to_canary else "stable"
        return (self.canary if to_canary else self.stable), _Watch(self, role)

    def shadow(self, feeds: dict[str, np.ndarray], priority: int, timeout_us: int) -> asyncio.Task | None:
        """In shadow mode, start a copy of a request on the canary (its share of them); None when not copied."""
        if not self.settings.shadow or self.rolled_back or random.random() >= self.settings.weight:
            return None
        copies = {k: v.copy() for k, v in feeds.items()}
        task = asyncio.get_running_loop().create_task(self._run_shadow(copies, priority, timeout_us))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)
        return task

    async def _run_shadow(self, feeds, priority: int, timeout_us: int):
        mv = self.canary
        try:
            with mv.stats.request(), _Watch(self, "shadow"):
                return await mv.run(feeds, priority, timeout_us)
        except Exception as e:  # counted; the client never sees a shadow's answer
            log.debug("model %s: shadow request to canary version %s failed: %s", self.model, mv.version, e)
            return None

    def compare(self, shadow: asyncio.Task, stable_out: dict) -> None:
        """Once the shadow copy answered, count it as a mismatch if its outputs differ from the stable's."""
        def done(task: asyncio.Task) -> None:
            out = None if task.cancelled() else task.result()
            if out is not None and not _same(out, stable_out):
                self.metrics(self.metrics.mismatches, self.model, self.canary.version).inc()
        shadow.add_done_callback(done)

    # ------------------------------------------------------------------ comparison and rollback
    def record(self, role: str, ok: bool, ns: int) -> None:
        version = self.canary.version if role != "stable" else self.stable.version
        self.metrics(self.metrics.requests, self.model, version, role).inc()
        if not ok:
            self.metrics(self.metrics.errors, self.model, version, role).inc()
        self.sides["stable" if role == "stable" else "canary"].outcomes.append((ok, ns))
        if role != "stable":
            self._since_check += 1
            if self._since_check >= CHECK_EVERY:
                self._since_check = 0
                self.check()

    def check(self) -> None:
        """Roll the canary back if it does worse than the stable version by more than the margins."""
        if self.rolled_back:
            return
        st, ca = self.sides["stable"], self.sides["canary"]
        n = self.settings.min_requests
        if len(st.outcomes) < n or len(ca.outcomes) < n:
            return
        s_err, c_err = st.error_rate(), ca.error_rate()
        s_p99, c_p99 = st.p99_ns(), ca.p99_ns()
        role_c = "shadow" if self.settings.shadow else "canary"
        for role, version, err, p99 in (("stable", self.stable.version, s_err, s_p99), (role_c, self.canary.version, c_err, c_p99)):
            self.metrics(self.metrics.error_rate, self.model, version, role).set(err)
            self.metrics(self.metrics.p99, self.model, version, role).set(p99 / 1e9)
        if c_err - s_err > self.settings.error_margin:
            self.rollback("error_rate", f"error rate {c_err:.3f} against the stable version's {s_err:.3f} (margin "
                                        f"{self.settings.error_margin:g})")
        elif s_p99 and c_p99 > s_p99 * (1 + self.settings.latency_margin):
            self.rollback("latency", f"p99 {c_p99 / 1e6:.1f} ms against the stable version's {s_p99 / 1e6:.1f} ms (margin "
                                     f"{self.settings.latency_margin * 100:.3g}%)")

    def rollback(self, reason: str, why: str) -> None:
        self.rolled_back = reason
        st, ca = self.sides["stable"], self.sides["canary"]
        log.warning("model %s: canary version %s rolled back: %s, over the last %d canary and %d stable requests; every "
                    "request naming no version now goes to version %s (load the model again to restart the canary)",
                    self.model, self.canary.version, why, len(ca.outcomes), len(st.outcomes), self.stable.version)
        self.metrics(self.metrics.rollbacks, self.model, self.canary.version, reason).inc()
        self.metrics(self.metrics.weight, self.model, self.canary.version).set(0)

    def close(self) -> None:
        for t in list(self._shadows):
            t.cancel()
        self.metrics.forget(self.model)


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        x, y = np.asarray(x), np.asarray(b[k])
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            if not np.allclose(x, y, rtol=1e-4, atol=1e-6, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True
