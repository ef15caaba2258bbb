"""The per-model scheduler in-process: dynamic batching (merge/split, zero delay, preferred
sizes, max batch), instance groups, priorities, queue policy, error isolation."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from tuili.backends.base import Backend
from tuili.errors import DeadlineExceededError, InvalidInputError, KernelError, ServerBusyError
from tuili.model_config import parse_model_config
from tuili.serve.scheduler import Scheduler
from tuili.serve.stats import Metrics, ModelStats


class Doubler(Backend):
    """A real numpy backend: y = 2x. It records the batch size of every call and can be held
    at a gate so requests pile up in the queue."""

    def __init__(self, gate: threading.Event | None = None):
        super().__init__()
        self.calls: list[int] = []
        self.gate = gate
        self.entered = threading.Event()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def infer(self, feeds):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            if self.gate is not None:
                self.gate.wait(10)
            x = feeds["x"]
            if np.isnan(x).any():
                raise KernelError("NaN input")
            self.calls.append(x.shape[0])
            return {"y": x * 2}
        finally:
            with self._lock:
                self.active -= 1


def make(config_text: str, backends: list[Backend]):
    cfg = parse_model_config(config_text, validate=False)
    loop = asyncio.get_running_loop()
    stats = ModelStats("m", "1", Metrics())
    return Scheduler("m", "1", cfg, backends, stats, loop), stats


BATCHING = 'name: "m" max_batch_size: 8 dynamic_batching { %s }'


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_zero_delay_batches_everything_already_queued():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, stats = make(BATCHING % "", [b])
        first = s.enqueue({"x": np.ones((1, 3), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)  # the instance is busy with `first`
        sizes = [2, 1, 3, 1]
        xs = [np.full((n, 3), i + 1, np.float32) for i, n in enumerate(sizes)]
        futs = [s.enqueue({"x": x}, len(x)) for x in xs]
        gate.set()
        res = await asyncio.gather(first, *futs)
        for x, r in zip(xs, res[1:]):
            np.testing.assert_array_equal(r["y"], 2 * x)
        # first ran alone; the 4 queued ones (7 rows) ran as ONE batch, not one by one
        assert b.calls == [1, 7]
        assert stats.execution_count == 2 and stats.inference_count == 8
        await s.stop()
    run(main())


def test_max_batch_size_and_preferred_sizes():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make(BATCHING % "preferred_batch_size: [ 4 ]", [b])
        first = s.enqueue({"x": np.ones((1, 3), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        futs = [s.enqueue({"x": np.full((1, 3), i, np.float32)}, 1) for i in range(10)]
        gate.set()
        res = await asyncio.gather(first, *futs)
        for i, r in enumerate(res[1:]):
            np.testing.assert_array_equal(r["y"], np.full((1, 3), 2 * i, np.float32))
        assert b.calls[0] == 1
        assert b.calls[1] == 4  # the largest preferred size, not all 8 that would fit
        assert sum(b.calls) == 11 and max(b.calls) <= 8
        await s.stop()
    run(main())


def test_queue_delay_gathers_requests():
    async def main():
        b = Doubler()
        s, _ = make(BATCHING % "max_queue_delay_microseconds: 300000 preferred_batch_size: [ 4 ]", [b])
        futs = []
        for i in range(4):
            futs.append(s.enqueue({"x": np.full((1, 2), i, np.float32)}, 1))
            await asyncio.sleep(0.005)
        res = await asyncio.gather(*futs)
        for i, r in enumerate(res):
            np.testing.assert_array_equal(r["y"], np.full((1, 2), 2 * i, np.float32))
        assert b.calls == [4]  # the batcher waited for the preferred size instead of running 1 at once
        await s.stop()
    run(main())


def test_no_dynamic_batching_runs_one_by_one():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make('name: "m" max_batch_size: 8', [b])
        futs = [s.enqueue({"x": np.ones((2, 3), np.float32)}, 2) for _ in range(3)]
        gate.set()
        await asyncio.gather(*futs)
        assert b.calls == [2, 2, 2]
        await s.stop()
    run(main())


def test_instances_run_concurrently():
    async def main():
        gate = threading.Event()
        bs = [Doubler(gate), Doubler(gate)]
        s, _ = make('name: "m" max_batch_size: 8', bs)
        futs = [s.enqueue({"x": np.ones((1, 3), np.float32)}, 1) for _ in range(2)]
        await asyncio.to_thread(bs[0].entered.wait, 10)
        await asyncio.to_thread(bs[1].entered.wait, 10)  # both instances inside infer at once
        gate.set()
        await asyncio.gather(*futs)
        assert len(bs[0].calls) == 1 and len(bs[1].calls) == 1
        await s.stop()
    run(main())


def test_priority_levels_order_the_queue():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make('name: "m" max_batch_size: 1 dynamic_batching { priority_levels: 2 default_priority_level: 2 }', [b])
        first = s.enqueue({"x": np.zeros((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        order = []
        low = [s.enqueue({"x": np.full((1, 1), 10 + i, np.float32)}, 1) for i in range(2)]
        high = s.enqueue({"x": np.full((1, 1), 99, np.float32)}, 1, priority=1)
        for f in [*low, high]:
            f.add_done_callback(lambda f: order.append(float(f.result()["y"][0, 0])))
        gate.set()
        await asyncio.gather(first, *low, high)
        assert order[0] == 198.0  # the high-priority request overtook the two queued before it
        with pytest.raises(InvalidInputError, match="priority"):
            s.enqueue({"x": np.zeros((1, 1), np.float32)}, 1, priority=3)
        await s.stop()
    run(main())


def test_max_queue_size_rejects_with_server_busy():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make(BATCHING % "default_queue_policy { max_queue_size: 2 }", [b])
        first = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        q = [s.enqueue({"x": np.ones((1, 1), np.float32)}, 1) for _ in range(2)]
        with pytest.raises(ServerBusyError, match="max_queue_size 2"):
            s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        gate.set()
        await asyncio.gather(first, *q)
        await s.stop()
    run(main())


def test_queue_timeout_rejects():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        # 100 ms: ample for the first request to reach the backend on a loaded CI machine
        s, _ = make(BATCHING % "default_queue_policy { default_timeout_microseconds: 100000 }", [b])
        first = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        late = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.sleep(0.5)  # the late request waits far longer than its 100 ms timeout
        gate.set()
        await first
        with pytest.raises(DeadlineExceededError, match="past its deadline"):
            await late
        await s.stop()
    run(main())


def test_a_failing_request_does_not_fail_its_batch_mates():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make(BATCHING % "", [b])
        first = s.enqueue({"x": np.ones((1, 2), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        good1 = s.enqueue({"x": np.full((2, 2), 3, np.float32)}, 2)
        bad = s.enqueue({"x": np.full((1, 2), np.nan, np.float32)}, 1)
        good2 = s.enqueue({"x": np.full((1, 2), 5, np.float32)}, 1)
        gate.set()
        r = await asyncio.gather(first, good1, bad, good2, return_exceptions=True)
        np.testing.assert_array_equal(r[1]["y"], np.full((2, 2), 6, np.float32))
        assert isinstance(r[2], KernelError)
        np.testing.assert_array_equal(r[3]["y"], np.full((1, 2), 10, np.float32))
        await s.stop()
    run(main())


def test_stop_finishes_queued_requests():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make(BATCHING % "", [b])
        futs = [s.enqueue({"x": np.full((1, 1), i, np.float32)}, 1) for i in range(5)]
        stopper = asyncio.create_task(s.stop())
        await asyncio.sleep(0.01)
        gate.set()
        await stopper
        assert [float(f.result()["y"][0, 0]) for f in futs] == [0, 2, 4, 6, 8]
        with pytest.raises(ServerBusyError):
            s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
    run(main())


def test_leftover_requests_wake_another_instance():
    """A batch former that leaves requests behind wakes an idle instance for them."""
    async def main():
        gate = threading.Event()
        bs = [Doubler(gate), Doubler(gate)]
        s, _ = make('name: "m" max_batch_size: 2 dynamic_batching { max_queue_delay_microseconds: 5000000 preferred_batch_size: [ 2 ] }', bs)
        futs = [s.enqueue({"x": np.zeros((1, 1), np.float32)}, 1)]
        for _ in range(500):  # one instance is now forming a batch (waiting for a 2nd request), the other sleeps
            if s._forming:
                break
            await asyncio.sleep(0.01)
        assert s._forming
        futs += [s.enqueue({"x": np.full((1, 1), i, np.float32)}, 1) for i in (1, 2, 3)]
        # the former takes 2 and must wake the sleeping instance for the other 2
        ok = await asyncio.to_thread(lambda: bs[0].entered.wait(5) and bs[1].entered.wait(5))
        gate.set()
        res = await asyncio.gather(*futs)
        assert ok, "the second instance was never woken for the leftover requests"
        assert [float(r["y"][0, 0]) for r in res] == [0, 2, 4, 6]
        assert sorted(bs[0].calls + bs[1].calls) == [2, 2]
        await s.stop()
    run(main())


def test_queues_are_bounded_by_the_server_default_unless_unbounded():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        cfg = parse_model_config(BATCHING % "", validate=False)
        s = Scheduler("m", "1", cfg, [b], ModelStats("m", "1", Metrics()), asyncio.get_running_loop(), default_max_queue_size=2)
        first = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        q = [s.enqueue({"x": np.ones((1, 1), np.float32)}, 1) for _ in range(2)]
        with pytest.raises(ServerBusyError, match="max_queue_size 2"):
            s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        unbounded = Scheduler("u", "1", cfg, [Doubler(gate)], ModelStats("u", "1", Metrics()), asyncio.get_running_loop(),
                              default_max_queue_size=0)
        many = [unbounded.enqueue({"x": np.ones((1, 1), np.float32)}, 1) for _ in range(1000)]
        gate.set()
        await asyncio.gather(first, *q, *many)
        await s.stop()
        await unbounded.stop()
    run(main())


def test_a_request_past_its_deadline_is_answered_at_once_and_never_runs():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, stats = make('name: "m" max_batch_size: 8', [b])
        first = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        late = s.enqueue({"x": np.full((1, 1), 7, np.float32)}, 1, timeout_us=50_000)
        with pytest.raises(DeadlineExceededError, match="did not run"):
            await late  # answered while the instance is still busy with `first`
        assert not first.done()
        gate.set()
        await first
        assert b.calls == [1] and stats.pending == 0
        with pytest.raises(InvalidInputError, match="negative"):
            s.enqueue({"x": np.ones((1, 1), np.float32)}, 1, timeout_us=-1)
        await s.stop()
    run(main())


def test_a_cancelled_request_leaves_the_queue():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, stats = make(BATCHING % "default_queue_policy { max_queue_size: 1 }", [b])
        first = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)

        async def client():
            return await s.enqueue({"x": np.full((1, 1), 5, np.float32)}, 1)

        task = asyncio.create_task(client())
        await asyncio.sleep(0.01)
        assert s._queued == 1
        task.cancel()  # the client went away
        await asyncio.gather(task, return_exceptions=True)
        assert s._queued == 0 and stats.pending == 1
        again = s.enqueue({"x": np.full((1, 1), 3, np.float32)}, 1)  # the slot is free again
        gate.set()
        await first
        np.testing.assert_array_equal((await again)["y"], [[6.0]])
        assert sorted(b.calls) == [1, 1]  # the cancelled request never ran
        await s.stop()
    run(main())
