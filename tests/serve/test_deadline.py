"""Deadline-aware scheduling: earliest deadline first within a priority level, requests that can no
longer make their deadline dropped before they run, and an ensemble's partial answers when a step
misses the deadline (aggregation_policy "partial"). The scheduler in-process, then a real `tuili serve`."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import SLEEPY_PY, _write, pending_requests, python_model, wait_for
from tests.serve.test_scheduler import Doubler, make, run
from tuili.errors import ConfigError, DeadlineExceededError
from tuili.serve.core import InferenceServer


def test_earliest_deadline_first_within_a_level_and_no_deadline_last():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make('name: "m" max_batch_size: 1 dynamic_batching { priority_levels: 2 default_priority_level: 2 }', [b])
        first = s.enqueue({"x": np.zeros((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        order = []
        plan = [(1, 0, 0), (2, 30_000_000, 0), (3, 10_000_000, 0), (4, 20_000_000, 0), (5, 0, 1), (6, 50_000_000, 1)]
        futs = []
        for value, timeout_us, priority in plan:
            f = s.enqueue({"x": np.full((1, 1), value, np.float32)}, 1, priority=priority, timeout_us=timeout_us)
            f.add_done_callback(lambda f: order.append(int(f.result()["y"][0, 0]) // 2))
            futs.append(f)
        gate.set()
        await asyncio.gather(first, *futs)
        # level 1 first (deadline 50 s before none), then level 2 by deadline, the one without a deadline last
        assert order == [6, 5, 3, 4, 2, 1]
        await s.stop()
    run(main())


def test_a_request_that_cannot_make_its_deadline_is_dropped_before_it_runs():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, stats = make('name: "m" max_batch_size: 8 dynamic_batching { }', [b])
        for _ in range(3):
            s.service.add(1, 10 * 10**9)  # the model's batches have been taking 10 s
        first = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        hopeless = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1, timeout_us=3_000_000)  # 3 s left, batches take 10
        fine = s.enqueue({"x": np.full((1, 1), 4, np.float32)}, 1)  # no deadline: runs
        gate.set()
        await first
        with pytest.raises(DeadlineExceededError, match="cannot finish before its deadline.*did not run"):
            await hopeless
        np.testing.assert_array_equal((await fine)["y"], [[8.0]])
        await asyncio.sleep(0.05)  # the done-callbacks run after the awaits
        assert b.calls == [1, 1] and stats.pending == 0
        await s.stop()
    run(main())


# ---------------------------------------------------------------- a real server
# Y = the order in which the model ran the request (0, 1, 2, ...), after sleeping X seconds
ORDER_PY = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.n = 0

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            time.sleep(float(x.reshape(-1)[0]))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([self.n], np.float32))]))
            self.n += 1
        return out
'''
IDENTITY_PY = SLEEPY_PY.replace("time.sleep(float(x.reshape(-1)[0]))", "pass")

ENSEMBLE = """
name: "{name}"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "FAST" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "SLOW" data_type: TYPE_FP32 dims: [ 1 ] }},
         {{ name: "AFTER" data_type: TYPE_FP32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "fast" model_version: -1 input_map {{ key: "X" value: "X" }} output_map {{ key: "Y" value: "FAST" }} }},
  {{ model_name: "slow" model_version: -1 input_map {{ key: "X" value: "X" }} output_map {{ key: "Y" value: "SLOW" }} }},
  {{ model_name: "fast" model_version: -1 input_map {{ key: "X" value: "SLOW" }} output_map {{ key: "Y" value: "AFTER" }} }}
] }}
{extra}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("deadline_repo"))
    python_model(root, "order", ORDER_PY, "dynamic_batching { }")
    python_model(root, "fast", IDENTITY_PY)
    python_model(root, "slow", SLEEPY_PY, 'instance_group [ { count: 2 kind: KIND_CPU } ]')
    partial = 'parameters { key: "aggregation_policy" value: { string_value: "partial" } }'
    _write(f"{root}/ens_partial/config.pbtxt", ENSEMBLE.format(name="ens_partial", extra=partial))
    _write(f"{root}/ens_all/config.pbtxt", ENSEMBLE.format(name="ens_all", extra=""))
    s = server_factory(root)
    yield s
    s.stop()


def _x(value: float, client=th):
    i = client.InferInput("X", [1], "FP32")
    i.set_data_from_numpy(np.array([value], np.float32))
    return i


def _call(url: str, model: str, value: float, timeout_us: int = 0):
    """One HTTP request from its own client (a thread's): (status, Y or the message)."""
    c = th.InferenceServerClient(url, network_timeout=60)
    try:
        return 200, c.infer(model, [_x(value)], timeout=timeout_us or None).as_numpy("Y")
    except InferenceServerException as e:
        return int(e.status() or 0), e.message()
    finally:
        c.close()


def test_edf_order_seen_by_the_model(srv):
    with cf.ThreadPoolExecutor(5) as pool:
        blocker = pool.submit(_call, srv.http, "order", 2.0)
        wait_for(lambda: pending_requests(srv, "order") >= 1)
        sent = []
        for timeout_us in (0, 40_000_000, 20_000_000, 30_000_000):
            n = pending_requests(srv, "order")
            sent.append(pool.submit(_call, srv.http, "order", 0.0, timeout_us))
            wait_for(lambda n=n: pending_requests(srv, "order") > n)  # queued in this order
        answers = [f.result() for f in sent]
        assert blocker.result()[0] == 200 and all(status == 200 for status, _ in answers)
        ran = [int(y[0]) for _, y in answers]
        # no deadline last; the others earliest deadline first: 20 s, 30 s, 40 s
        assert np.argsort(ran).tolist() == [2, 3, 1, 0]


def test_partial_ensemble_answers_without_the_late_step(srv):
    for proto in (th, tg):
        url = srv.http if proto is th else srv.grpc
        c = proto.InferenceServerClient(url)
        t0 = time.monotonic()
        r = c.infer("ens_partial", [_x(4.0, proto)], timeout=1_000_000)  # the slow step sleeps 4 s, the deadline is 1 s
        assert time.monotonic() - t0 < 4.0  # answered at the deadline, not when the slow step finished
        np.testing.assert_array_equal(r.as_numpy("FAST"), [4.0])
        assert r.as_numpy("SLOW") is None and r.as_numpy("AFTER") is None  # AFTER needed SLOW
        params = r.get_response()["parameters"] if proto is th else r.get_response().parameters
        missing = params["missing_outputs"] if proto is th else params["missing_outputs"].string_param
        assert missing == "SLOW,AFTER"
        c.close()


def test_partial_ensemble_in_time_is_complete(srv):
    c = th.InferenceServerClient(srv.http)
    r = c.infer("ens_partial", [_x(0.0)], timeout=30_000_000)
    assert [float(r.as_numpy(n)[0]) for n in ("FAST", "SLOW", "AFTER")] == [0.0, 0.0, 0.0]
    assert "parameters" not in r.get_response()
    c.close()


def test_all_policy_fails_when_a_step_misses_the_deadline(srv):
    with cf.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(_call, srv.http, "slow", 1.5) for _ in range(2)]  # both slow instances busy
        wait_for(lambda: pending_requests(srv, "slow") >= 2)
        c = th.InferenceServerClient(srv.http, network_timeout=30)
        with pytest.raises(InferenceServerException) as e:
            c.infer("ens_all", [_x(0.0)], timeout=300_000)  # the slow step waits in the queue past the deadline
        c.close()
        assert int(e.value.status()) == 504 and "deadline" in e.value.message()
        assert [h.result()[0] for h in held] == [200, 200]


def test_aggregation_policy_is_refused_on_a_plain_model(tmp_path):
    python_model(str(tmp_path), "plain", IDENTITY_PY, 'parameters { key: "aggregation_policy" value: { string_value: "partial" } }')
    _write(f"{tmp_path}/ens_bad/config.pbtxt", ENSEMBLE.format(
        name="ens_bad", extra='parameters { key: "aggregation_policy" value: { string_value: "some" } }'))

    async def main():
        core = InferenceServer(str(tmp_path), "explicit")
        await core.start()
        with pytest.raises(ConfigError, match="aggregation_policy applies to ensembles only"):
            await core.load_model("plain")
        with pytest.raises(ConfigError, match="use \"all\" or \"partial\""):
            await core.load_model("ens_bad")
        await core.stop()
    asyncio.run(main())
