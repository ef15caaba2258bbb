"""The request queues of a model version: one per priority level, earliest deadline first.

A queued request is a ``Pending``. Within a level the queue serves the request with the earliest
deadline first; requests without a deadline (or whose level's policy delays instead of rejecting)
come after every request with one, in arrival order, so a model whose clients send no timeouts
keeps Triton's FIFO order. The queues are touched with the scheduler's lock held.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterator

from tuili.errors import DeadlineExceededError

#: Requests one priority level of a model may hold queued when its config sets no max_queue_size.
DEFAULT_MAX_QUEUE_SIZE = 256
_NO_DEADLINE = 1 << 126


class Pending:
    __slots__ = ("feeds", "batch", "fut", "t_enqueue", "deadline", "level", "queued", "timer", "result", "error", "stream",
                 "order")

    def __init__(self, feeds, batch, fut, t_enqueue, deadline, level):
        self.feeds = feeds
        self.batch = batch
        self.fut = fut
        self.t_enqueue = t_enqueue
        self.deadline = deadline  # monotonic ns, 0 = none
        self.level = level
        self.queued = True  # False once a worker took it or it left the queue
        self.timer = None
        self.result = None
        self.error = None
        self.stream = None  # a decoupled model's ResponseStream (serve.streaming)
        self.order = (deadline or _NO_DEADLINE, t_enqueue)  # the queue's sort key


class QueuePolicy:
    __slots__ = ("reject_on_timeout", "default_timeout_ns", "allow_override", "max_queue_size")

    def __init__(self, msg=None):
        if msg is None:
            self.reject_on_timeout, self.default_timeout_ns, self.allow_override, self.max_queue_size = True, 0, False, 0
        else:
            self.reject_on_timeout = int(msg.timeout_action) == 0  # REJECT
            self.default_timeout_ns = int(msg.default_timeout_microseconds) * 1000
            self.allow_override = bool(msg.allow_timeout_override)
            self.max_queue_size = int(msg.max_queue_size)


class RequestQueue:
    """One priority level: Pending requests sorted by (deadline, arrival)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[Pending] = []

    def push(self, item: Pending, edf: bool = True) -> None:
        if not edf:  # the level delays late requests instead of rejecting them: its deadlines do not order it
            item.order = (_NO_DEADLINE, item.t_enqueue)
        bisect.insort_right(self.items, item, key=_order)

    def remove(self, item: Pending) -> None:
        self.items.remove(item)

    def pop_front(self, n: int) -> list[Pending]:
        taken = self.items[:n]
        del self.items[:n]
        return taken

    def keep(self, items: list[Pending]) -> None:
        self.items = items

    def oldest(self) -> int:
        """The arrival time of the request queued longest (the queue is not empty)."""
        return min(it.t_enqueue for it in self.items)

    def clear(self) -> None:
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[Pending]:
        return iter(self.items)

    def __getitem__(self, i: int) -> Pending:
        return self.items[i]


def _order(item: Pending):
    return item.order


def set_results(items: list[Pending]) -> None:
    """Answer each request's future with its result or error (event-loop side)."""
    for it in items:
        if it.fut.done():  # the client went away
            continue
        if it.error is not None:
            it.fut.set_exception(it.error)
        else:
            it.fut.set_result(it.result)


def deadline_error(model: str, item: Pending, now: int, service_ns: int = 0) -> DeadlineExceededError:
    """The answer of a request dropped for its deadline: past it, or (``service_ns``: the model's typical
    batch time) too close to it to finish."""
    total = (item.deadline - item.t_enqueue) // 1000
    waited = (now - item.t_enqueue) // 1000
    if item.deadline <= now or not service_ns:
        return DeadlineExceededError(
            f"request to model {model!r} waited {waited} us in the queue, past its deadline of {total} us; it did not "
            f"run. Retry, or raise the timeout / default_timeout_microseconds")
    return DeadlineExceededError(
        f"request to model {model!r} cannot finish before its deadline: {(item.deadline - now) // 1000} us of its "
        f"{total} us were left after {waited} us in the queue, and the model's batches take about {service_ns // 1000} "
        f"us; it did not run. Retry, or raise the timeout (or the model's slo_ms)")
