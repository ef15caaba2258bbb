"""Per-model-version scheduler: priority queues, the dynamic batcher and the instance threads.

Requests are enqueued from the event loop (``enqueue`` returns an asyncio future); each model
instance is one worker thread that owns one backend instance, forms a batch straight from the
queues under one lock, runs it and hands all results of the batch back to the loop in a single
``call_soon_threadsafe``. So a request crosses threads exactly twice.

Dynamic batching (Triton's knobs): ``max_batch_size``, ``preferred_batch_size``,
``max_queue_delay_microseconds``; the batch-size policy (serve/batching.py) decides how large a
batch may be and when to form it: fixed, or adapted to the model's ``slo_ms`` (AIMD). Requests of
different batch sizes are concatenated along dim 0 and the results split back. With zero delay a
free instance takes *everything already queued* (up to the cap) rather than the first request alone.

Backpressure and deadlines: every queue is bounded (the queue policy's ``max_queue_size``, else
the server's default; unbounded only when the server is told so) and a full queue refuses at
once with ServerBusyError. A request's deadline (its ``timeout`` parameter in microseconds, else
the policy's ``default_timeout_microseconds``, else the model's ``slo_ms``) orders its priority
level's queue (earliest deadline first, serve/queues.py) and is enforced on the loop by a timer
and again when a batch is formed: a request past its deadline, or with less time left than the
model's typical batch takes, never runs and gets DeadlineExceededError; an SLO model also drops
its oldest requests while the batch of the rest could not make its earliest deadline
(serve/batching.hopeless, with the batch-latency model BatchTimes). A request whose client
went away (its awaiting task cancelled) leaves the queue at once.

Instances in worker processes (tuili.backends.worker) may die and restart: an instance thread
waits for its worker to be back before it takes work, a batch in flight on a dying worker fails
with WorkerDiedError, and ``healthy`` says whether any instance can serve.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from tuili.errors import InvalidInputError, KernelError, ServerBusyError, TuiliError, WorkerDiedError
from tuili.serve.batching import BatchTimes, FixedBatching, SloBatching, hopeless, slo_ns
from tuili.serve.queues import DEFAULT_MAX_QUEUE_SIZE, Pending, QueuePolicy, RequestQueue, deadline_error, set_results
from tuili.serve.runner import Runner

__all__ = ["DEFAULT_MAX_QUEUE_SIZE", "Pending", "QueuePolicy", "Scheduler", "STOP_GRACE_S"]

log = logging.getLogger(__name__)
_now = time.monotonic_ns
_set_results = set_results  # the name serve.sequence uses

#: How long stop() lets accepted requests finish before it refuses the queued ones and kills workers.
STOP_GRACE_S = 30.0


class Scheduler(Runner):
    """The Runner of one model version with backend instances."""

    def __init__(self, model: str, version: str, config, instances: list, stats, loop: asyncio.AbstractEventLoop,
                 default_max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE):
        """``default_max_queue_size``: the bound of a queue whose policy sets none; 0 = unbounded."""
        super().__init__()
        self.model, self.version = model, version
        self.instances = instances
        self.stats = stats
        self.loop = loop
        self.max_batch = int(config.max_batch_size)
        self.dynamic = config.HasField("dynamic_batching") and self.max_batch > 0
        db = config.dynamic_batching
        preferred = sorted({int(p) for p in db.preferred_batch_size if 0 < int(p) <= self.max_batch}) if self.dynamic else []
        delay_ns = int(db.max_queue_delay_microseconds) * 1000 if self.dynamic else 0
        self.slo_ns = slo_ns(config)  # the latency objective: the default deadline, and AIMD's target
        self.service = BatchTimes()  # recent batch times: who can still make their deadline
        self.adaptive = self.dynamic and bool(self.slo_ns)
        if self.adaptive:
            self.policy: FixedBatching = SloBatching(self.max_batch, preferred, delay_ns, self.slo_ns, self.service,
                                                     f"model {model!r} version {version}", stats.record_batching)
            stats.record_batching(self.policy)
        else:
            self.policy = FixedBatching(max(1, self.max_batch), preferred, delay_ns)
        levels = int(db.priority_levels) if config.HasField("dynamic_batching") else 0
        self.levels = max(1, levels)
        self.has_priorities = levels > 0
        dl = int(db.default_priority_level) if levels else 0
        self.default_level = (dl - 1) if 1 <= dl <= self.levels else (self.levels - 1 if levels else 0)
        default_policy = QueuePolicy(db.default_queue_policy if config.HasField("dynamic_batching") and db.HasField("default_queue_policy") else None)
        self.policies = [default_policy] * self.levels
        if config.HasField("dynamic_batching"):
            for lvl, pol in db.priority_queue_policy.items():
                if 1 <= int(lvl) <= self.levels:
                    self.policies[int(lvl) - 1] = QueuePolicy(pol)
        # the bound of each level's queue (0 = unbounded)
        self.max_queued = [p.max_queue_size or default_max_queue_size for p in self.policies]
        self.stop_grace_s = STOP_GRACE_S
        self.queues: list[RequestQueue] = [RequestQueue() for _ in range(self.levels)]
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle workers wait here
        self._form = threading.Condition(self._lock)  # the worker forming a delayed batch waits here
        self._forming = False
        self._queued = 0
        self._stopping = False
        self.wants_request_list = bool(instances and instances[0].wants_request_list)
        self.decoupled = bool(instances and instances[0].decoupled)
        self.threads = [
            threading.Thread(target=self._worker, args=(i, b), name=f"tuili-{model}-v{version}-{i}", daemon=True)
            for i, b in enumerate(instances)
        ]
        for t in self.threads:
            t.start()

    # ------------------------------------------------------------------ event-loop side
    def enqueue(self, feeds: dict[str, np.ndarray], batch: int, priority: int = 0, timeout_us: int = 0,
                stream=None) -> asyncio.Future:
        """Queue one request; refusals raise at once, the future holds the outputs or the error of running it.

        ``timeout_us``: the request's deadline from now in microseconds (0 = the policy's default).
        ``stream``: where a decoupled model's responses go (its future then holds ``{}`` once it is done)."""
        if priority and self.has_priorities:
            if not 1 <= priority <= self.levels:
                raise InvalidInputError(f"model {self.model!r}: priority {priority} is out of range; this model has priority levels 1..{self.levels}")
            level = priority - 1
        else:
            level = self.default_level
        now = _now()
        timeout_ns = self._timeout_ns(level, timeout_us)
        item = Pending(feeds, batch, self.loop.create_future(), now, now + timeout_ns if timeout_ns else 0, level)
        item.stream = stream
        limit = self.max_queued[level]
        with self._lock:
            if self._stopping:
                raise ServerBusyError(f"model {self.model!r} version {self.version} is unloading; retry the request")
            q = self.queues[level]
            if limit and len(q) >= limit:
                raise ServerBusyError(
                    f"queue of model {self.model!r} (priority level {level + 1}) is full: {len(q)} requests, "
                    f"max_queue_size {limit}; retry later or raise max_queue_size"
                )
            q.push(item, self.policies[level].reject_on_timeout)
            self._queued += 1
            if self._forming:
                self._form.notify()
            else:
                self._work.notify()
        return self._track(item, timeout_ns)

    def _timeout_ns(self, level: int, timeout_us: int) -> int:
        """The deadline of a request at ``level`` from now in ns (0: none): its own timeout, else the policy's,
        else the model's latency objective."""
        if timeout_us < 0:
            raise InvalidInputError(f"request to model {self.model!r}: timeout {timeout_us} is negative; give microseconds >= 0 "
                                    f"(0 = the model's default)")
        pol = self.policies[level]
        timeout_ns = pol.default_timeout_ns
        if timeout_us and (pol.allow_override or not timeout_ns):
            timeout_ns = int(timeout_us) * 1000
        return timeout_ns or self.slo_ns

    def _track(self, item: Pending, timeout_ns: int) -> asyncio.Future:
        """Count a queued request in flight, arm its deadline timer, and clean up once it is answered."""
        self._accepted()
        self.stats.pending += 1
        if item.deadline and self.policies[item.level].reject_on_timeout:
            item.timer = self.loop.call_later(timeout_ns / 1e9, self._deadline_passed, item)
        item.fut.add_done_callback(lambda f: self._answered(item))
        return item.fut

    def _unqueue(self, item: Pending) -> bool:
        """Take a request out of its queue if it is still there (event loop side)."""
        with self._lock:
            if not item.queued:
                return False
            item.queued = False
            self.queues[item.level].remove(item)
            self._queued -= 1
            return True

    def _deadline_passed(self, item: Pending) -> None:
        if self._unqueue(item) and not item.fut.done():
            item.fut.set_exception(deadline_error(self.model, item, _now()))

    def _answered(self, item: Pending) -> None:
        if item.fut.cancelled():  # the client went away: its request leaves the queue
            self._unqueue(item)
        if item.timer is not None:
            item.timer.cancel()
        self.stats.pending -= 1
        super()._answered()

    @property
    def healthy(self) -> bool:
        """False while no instance can serve (every worker process down or restarting)."""
        return any(getattr(b, "ready", True) for b in self.instances)

    async def stop(self) -> None:
        """Finish what is queued, stop the workers and unload the instances.

        After ``stop_grace_s`` the queued requests are refused and worker processes killed (their
        requests fail), so a hung model cannot block an unload."""
        try:
            await asyncio.wait_for(self.drain(), self.stop_grace_s)
        except TimeoutError:
            log.warning("model %s version %s: %d requests still unanswered after %.0f s; refusing the queued ones and "
                        "killing the instance workers", self.model, self.version, self.inflight, self.stop_grace_s)
            self._abandon()
            await asyncio.wait_for(self.drain(), self.stop_grace_s)
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._form.notify_all()

        def join_and_unload():
            for t, b in zip(self.threads, self.instances):
                t.join(self.stop_grace_s)
                if t.is_alive():
                    log.error("model %s: an instance thread is stuck in the model; leaving it behind", self.model)
                    continue
                try:
                    b.unload()
                except Exception:
                    log.exception("model %s: unloading an instance failed", self.model)

        await asyncio.to_thread(join_and_unload)

    def _abandon(self) -> None:
        with self._lock:
            self._stopping = True
            queued = [it for q in self.queues for it in q]
            for q in self.queues:
                q.clear()
            for it in queued:
                it.queued = False
            self._queued = 0
            self._work.notify_all()
            self._form.notify_all()
        for it in queued:
            it.error = ServerBusyError(f"model {self.model!r} version {self.version} is unloading; retry the request")
        set_results(queued)
        for b in self.instances:
            kill = getattr(b, "kill", None)
            if kill is not None:
                kill("the model is unloading and the request did not finish in time")

    # ------------------------------------------------------------------ worker side
    def _expire(self, now: int, rejected: list[Pending]) -> None:
        """Move the requests that cannot make their deadline (policy REJECT) from the queues to ``rejected``:
        past it, or with less time left than the model's typical batch takes (an SLO model: a batch of one)."""
        typical = self.policy.batch_ns(1) if self.adaptive else self.service.typical()
        cutoff = now + typical
        for lvl, q in enumerate(self.queues):
            if not q or not self.policies[lvl].reject_on_timeout:
                continue
            if any(it.deadline and it.deadline <= cutoff for it in q):
                keep = []
                for it in q:
                    if it.deadline and it.deadline <= cutoff:
                        it.queued = False
                        it.error = deadline_error(self.model, it, now, typical)
                        rejected.append(it)
                        self._queued -= 1
                    else:
                        keep.append(it)
                q.keep(keep)

    def _candidates(self) -> list[Pending]:
        """The requests that fit in one batch under the policy's cap, in priority / deadline order."""
        out, total, cap = [], 0, self.policy.cap
        for q in self.queues:
            for it in q:
                if total + it.batch > cap:
                    return out
                out.append(it)
                total += it.batch
        return out

    def _drop_hopeless(self, now: int, rejected: list[Pending]) -> None:
        """An SLO model: drop the oldest requests while the batch of the rest cannot make its earliest deadline
        (serve/batching.hopeless), so under overload the batch run is the largest whose requests all make it."""
        order = [it for q in self.queues for it in q]
        deadlines = [it.deadline if self.policies[it.level].reject_on_timeout else 0 for it in order]
        k = hopeless([it.batch for it in order], deadlines, self.policy.cap, now, self.policy.batch_ns)
        if k:
            batch_ns = self.policy.batch_ns(min(self.policy.cap, sum(it.batch for it in order[k:])) or 1)
            for it in self._take(k):
                it.error = deadline_error(self.model, it, now, batch_ns)
                rejected.append(it)

    def _take(self, n: int) -> list[Pending]:
        """Pop the first n requests in priority / deadline order."""
        taken = []
        for q in self.queues:
            if len(taken) == n:
                break
            taken += q.pop_front(n - len(taken))
        for it in taken:
            it.queued = False
        self._queued -= len(taken)
        return taken

    def _next_batch(self, rejected: list[Pending]) -> list[Pending]:
        """Called with the lock held and at least one request queued."""
        if not self.dynamic:
            self._expire(_now(), rejected)
            return self._take(1) if self._queued else []
        while True:
            now = _now()
            self._expire(now, rejected)
            if self.adaptive and self._queued:
                self._drop_hopeless(now, rejected)
            if not self._queued:
                return []
            cands = self._candidates()
            if not cands:  # the head request alone is larger than the cap: it runs alone
                return self._take(1)
            deadlines = [it.deadline for it in cands if it.deadline and self.policies[it.level].reject_on_timeout]
            batch_ns = self.policy.batch_ns(sum(it.batch for it in cands)) if self.adaptive else self.service.typical()
            latest_start = min(deadlines) - batch_ns if deadlines else 0
            oldest = min(q.oldest() for q in self.queues if q)
            n, until = self.policy.decide([it.batch for it in cands], oldest, latest_start, now, self._stopping)
            if n:
                return self._take(n)
            self._forming = True
            try:
                self._form.wait(max(0, until - now) / 1e9)
            finally:
                self._forming = False

    def _worker(self, index: int, backend) -> None:
        wait_ready = getattr(backend, "wait_ready", None)  # an instance in a worker process that may restart
        while True:
            while wait_ready is not None and not backend.ready and not self._stopping:
                wait_ready(0.25)
            rejected: list[Pending] = []
            with self._lock:
                while not self._queued and not self._stopping:
                    self._work.wait()
                if not self._queued and self._stopping:
                    return
                batch = self._next_batch(rejected)
                if self._queued:  # more than one batch is waiting: wake another idle instance
                    self._work.notify()
            if rejected:
                self.loop.call_soon_threadsafe(set_results, rejected)
            if batch:
                self._execute(backend, batch)

    def _execute(self, backend, batch: list[Pending]) -> None:
        t0 = _now()
        queue_ns = [t0 - it.t_enqueue for it in batch]
        total = sum(it.batch for it in batch)
        try:
            if self.decoupled:
                t1 = t0
                backend.infer_decoupled([it.feeds for it in batch], lambda i, *response: batch[i].stream.push(*response),
                                        lambda i: batch[i].stream.cancelled)
                t2 = t3 = _now()
                for it in batch:
                    it.result = {}
            elif self.wants_request_list:
                t1 = t0
                results = backend.infer_many([it.feeds for it in batch])
                t2 = _now()
                for it, r in zip(batch, results):
                    if isinstance(r, BaseException):
                        it.error = r if isinstance(r, TuiliError) else KernelError(f"model {self.model!r}: {type(r).__name__}: {r}")
                    else:
                        it.result = r
                t3 = t2
            elif len(batch) == 1:
                t1 = t0
                batch[0].result = backend.infer(batch[0].feeds)
                t2 = t3 = _now()
            else:
                first = batch[0].feeds
                feeds = {k: np.concatenate([it.feeds[k] for it in batch]) for k in first}
                t1 = _now()
                out = backend.infer(feeds)
                t2 = _now()
                start = 0
                for it in batch:
                    end = start + it.batch
                    it.result = {k: (v[start:end] if getattr(v, "ndim", 0) else v) for k, v in out.items()}
                    start = end
                t3 = _now()
        except Exception as e:
            if len(batch) > 1 and not self.wants_request_list and not isinstance(e, WorkerDiedError):
                # Isolate the failing request: the others must not be disturbed.
                log.debug("model %s: batched execution failed (%s); running the %d requests one by one", self.model, e, len(batch))
                for it in batch:
                    self._execute(backend, [it])
                return
            err = e if isinstance(e, TuiliError) else KernelError(f"model {self.model!r}: {type(e).__name__}: {e}")
            for it in batch:
                it.error = err
            self._finish(batch)
            return
        ok = sum(1 for it in batch if it.error is None)
        with self._lock:
            self.service.add(total, t3 - t0)
            self.policy.observe(total, t3 - t0, [t3 - it.t_enqueue for it in batch if it.error is None])
        if ok:
            self.stats.record_execution(total, ok, [q for q, it in zip(queue_ns, batch) if it.error is None], t1 - t0, t2 - t1, t3 - t2)
        self._finish(batch)

    def _finish(self, batch: list[Pending]) -> None:
        """Hand the answers of an executed batch to the event loop (worker side)."""
        self.loop.call_soon_threadsafe(set_results, batch)
