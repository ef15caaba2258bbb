"""SLO-adaptive batching (serve/batching.py): the AIMD policy, the batch-latency model and the choice of
whom to drop on their own; the scheduler dropping the oldest so the rest run in one batch; and a
real `tuili serve` whose python model takes as long as its requests ask: the batch cap stays at
max_batch_size under a loose objective and is cut under a tight one, reported in the statistics and
the metrics."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import random
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import python_model
from tests.serve.test_scheduler import Doubler, make, run
from tuili.errors import ConfigError, DeadlineExceededError
from tuili.model_config import parse_model_config
from tuili.serve.batching import BACKOFF, WINDOW, BatchTimes, FixedBatching, SloBatching, hopeless, percentile, slo_ns

MS = 1_000_000


def test_aimd_cuts_when_the_latency_p99_is_over_the_objective_and_grows_back_while_within():
    p = SloBatching(max_batch=16, preferred=[], delay_ns=0, slo_ns=100 * MS, times=BatchTimes())
    assert p.cap == 16  # starts at max_batch_size: the deadlines keep batches small
    p.observe(16, 30 * MS, [50 * MS] * 16)
    assert p.cap == 16 and p.increases == 0  # never above max_batch_size
    p.observe(16, 30 * MS, [150 * MS] * 3)  # 3 of 19 late: the p99 is over the target (90 ms, 90% of the objective)
    assert p.cap == int(16 * BACKOFF) and p.cuts == 1 and len(p.window) == 0  # cut; the window starts afresh
    p.observe(p.cap, 30 * MS, [50 * MS] * p.cap)
    assert p.cap == int(16 * BACKOFF) + 1  # full at the cap and within: additive growth; the late ones no longer count
    p.observe(2, 30 * MS, [50 * MS] * 2)
    assert p.cap == int(16 * BACKOFF) + 1  # a batch below the cap says nothing about a larger one
    for _ in range(100):
        p.observe(p.cap, 30 * MS, [500 * MS])
    assert p.cap == 1  # and never below 1
    d = p.describe()
    assert d["batch_cap"] == 1 and d["slo_ms"] == 100 and d["latency_p99_ns"] == 500 * MS
    assert d["latency_target_ns"] == 90 * MS and p.batch_ns(1) == 10 * MS  # nothing run yet: the margin alone


def test_the_p99_is_over_a_window_of_recent_requests():
    p = SloBatching(max_batch=1000, preferred=[], delay_ns=0, slo_ns=100 * MS, times=BatchTimes())
    for _ in range(WINDOW * 2):
        p.observe(1, 1 * MS, [1 * MS])
    assert len(p.window) == WINDOW and p.latency_p99_ns == 1 * MS
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile(range(1, 101), 99) == 99


def test_the_latency_model_fits_a_line_through_the_batches_seen():
    t = BatchTimes()
    assert t.predict(8) == 0  # nothing seen: nothing predicted, nobody dropped
    for rows in (1, 10, 30):
        t.add(rows, (40 + 2 * rows) * MS)  # t(b) = 40 + 2b ms exactly
    assert abs(t.predict(20) - 80 * MS) <= 1000 and abs(t.predict(1) - 42 * MS) <= 1000
    t.add(10, 70 * MS)  # a batch that ran 10 ms over the line: the prediction leaves room for such
    assert t.predict(10) > 60 * MS
    assert abs(t.predict(100) - t.predict(30)) <= 1000  # above the largest batch seen: as that one, until tried
    one = BatchTimes()
    for _ in range(3):
        one.add(4, 50 * MS)
    assert one.predict(1) == one.predict(8) == 50 * MS  # one size seen: no slope known


def test_the_oldest_go_only_while_the_batch_of_the_rest_cannot_make_it():
    def predict(b):
        return (40 + 2 * b) * MS
    light = [200 * MS] * 10
    assert hopeless([1] * 10, light, 64, 0, predict) == 0  # a batch of 10 takes 60 ms: all make it
    # overload at 500/s: 80 queued, arrived 2 ms apart over the last 160 ms, SLO 200 ms: the deadlines are 40 + 2i ms.
    # Dropping the 40 oldest leaves a batch of 40 (120 ms) whose oldest has exactly 120 ms left.
    overload = [(40 + 2 * i) * MS for i in range(80)]
    assert hopeless([1] * 80, overload, 64, 0, predict) == 40
    # the cap bounds the batch the rest would form: 4 rows take 48 ms
    assert hopeless([1] * 10, [50 * MS] + light[1:], 4, 0, predict) == 0
    assert hopeless([1] * 10, [47 * MS] + light[1:], 4, 0, predict) == 1
    assert hopeless([3, 1], [47 * MS, 200 * MS], 4, 0, predict) == 1  # rows, not requests, fill a batch
    assert hopeless([1] * 3, [0, 1 * MS, 1 * MS], 64, 0, predict) == 0  # no deadline: never dropped, stops the search


def test_hopeless_agrees_with_its_definition_on_random_queues():
    def by_definition(rows, deadlines, cap, now, predict):
        i = 0
        while i < len(rows) and deadlines[i]:
            total, earliest = 0, deadlines[i]
            for b, d in zip(rows[i:], deadlines[i:]):
                if total + b > cap and total:
                    break
                total += b
                earliest = min(earliest, d or earliest)
            if now + predict(total) <= earliest:
                break
            i += 1
        return i

    rng = random.Random(7)
    for _ in range(500):
        n = rng.randint(0, 30)
        rows = [rng.randint(1, 4) for _ in range(n)]
        deadlines = [rng.choice([0, 1, 1, 1]) * rng.randint(1, 200) * MS for _ in range(n)]
        cap = rng.randint(1, 16)
        a, c = rng.randint(0, 50), rng.randint(0, 10)

        def predict(b, a=a, c=c):
            return (a + c * b) * MS
        assert hopeless(rows, deadlines, cap, 0, predict) == by_definition(rows, deadlines, cap, 0, predict)


def test_an_slo_model_drops_the_oldest_so_the_rest_run_in_one_batch():
    async def main():
        gate = threading.Event()
        b = Doubler(gate)
        s, _ = make('name: "m" max_batch_size: 8 dynamic_batching { } parameters { key: "slo_ms" value: { string_value: "10000" } }', [b])
        assert s.policy.cap == 8
        for rows in (1, 2, 4):
            s.service.add(rows, rows * 10**9)  # a batch takes 1 s a row: no gain from batching
        first = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1)
        await asyncio.to_thread(b.entered.wait, 10)
        # 3.5 s left: it could run alone (about 1 s, and 1 s margin for the rest of the server: 10% of slo_ms),
        # but the batch of all four would take about 4 s + 1 s
        oldest = s.enqueue({"x": np.ones((1, 1), np.float32)}, 1, timeout_us=3_500_000)
        rest = [s.enqueue({"x": np.full((1, 1), v, np.float32)}, 1) for v in (2, 3, 4)]  # the slo_ms deadline: 10 s
        gate.set()
        await first
        with pytest.raises(DeadlineExceededError, match="cannot finish before its deadline"):
            await oldest
        assert [int((await f)["y"][0, 0]) for f in rest] == [4, 6, 8]
        assert b.calls == [1, 3]  # the rest in one batch
        await s.stop()
    run(main())


def test_fixed_policy_forms_batches_as_triton_does():
    f = FixedBatching(8, [4], 1000)
    assert f.decide([1, 1], oldest=0, latest_start=0, now=10, stopping=False) == (0, 1000)  # wait for the delay
    assert f.decide([1, 1], oldest=0, latest_start=0, now=1000, stopping=False) == (2, 0)
    assert f.decide([2, 2, 1], oldest=0, latest_start=0, now=5, stopping=False) == (2, 0)  # the preferred size
    assert f.decide([1], oldest=0, latest_start=500, now=10, stopping=False) == (0, 500)  # a deadline comes first


def test_slo_ms_must_be_a_positive_number():
    assert slo_ns(parse_model_config('name: "m" parameters { key: "slo_ms" value: { string_value: "2.5" } }')) == 2_500_000
    for bad in ("0", "-3", "fast", "nan"):
        cfg = parse_model_config(f'name: "m" parameters {{ key: "slo_ms" value: {{ string_value: "{bad}" }} }}')
        with pytest.raises(ConfigError, match="slo_ms"):
            slo_ns(cfg)


# A model whose batch takes the sum of its requests' X seconds.
SUM_SLEEP_PY = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        time.sleep(float(sum(x.sum() for x in xs)))
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x.copy())]) for x in xs]
'''


@pytest.fixture(scope="module")
def srv(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("slo_repo"))
    for name, slo in (("loose", "10000"), ("tight", "1000")):
        python_model(root, name, SUM_SLEEP_PY, f'dynamic_batching {{ }} parameters {{ key: "slo_ms" value: {{ string_value: "{slo}" }} }}',
                     max_batch_size=16)
    s = server_factory(root)
    yield s
    s.stop()


def _load(url: str, model: str, seconds: float, clients: int, each: int) -> list[int]:
    """``clients`` threads each sending ``each`` requests of X = seconds; the HTTP statuses."""
    def one(_):
        c = th.InferenceServerClient(url, network_timeout=60)
        out = []
        try:
            for _ in range(each):
                i = th.InferInput("X", [1, 1], "FP32")
                i.set_data_from_numpy(np.array([[seconds]], np.float32))
                try:
                    c.infer(model, [i])
                    out.append(200)
                except InferenceServerException as e:
                    out.append(int(e.status() or 0))
        finally:
            c.close()
        return out
    with cf.ThreadPoolExecutor(clients) as pool:
        return [s for part in pool.map(one, range(clients)) for s in part]


def _batching(url: str, model: str) -> dict:
    c = th.InferenceServerClient(url)
    return c.get_inference_statistics(model)["model_stats"][0]["slo_batching"]


def _metric(srv, name: str, model: str) -> float:
    text = urllib.request.urlopen(f"http://{srv.metrics}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"'):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} for {model} in the metrics")


def test_the_cap_holds_under_a_loose_objective(srv):
    statuses = _load(srv.http, "loose", 0.001, clients=12, each=15)
    assert set(statuses) == {200}
    b = _batching(srv.http, "loose")
    assert b["batch_cap"] == 16 and b["cap_cuts"] == 0 and b["latency_p99_ns"] > 0
    assert b["slo_ms"] == 10000 and b["max_batch_size"] == 16
    assert _metric(srv, "tuili_batch_cap", "loose") == b["batch_cap"]
    assert _metric(srv, "tuili_slo_seconds", "loose") == 10.0


def test_the_cap_is_cut_under_a_tight_objective(srv):
    _load(srv.http, "tight", 0.001, clients=12, each=15)  # fast batches: the latency model learns 1 ms a request
    grown = _batching(srv.http, "tight")
    assert grown["batch_cap"] == 16
    # each request now takes 0.3 s, which the model has not seen: a batch of four is past slo_ms 1000
    statuses = _load(srv.http, "tight", 0.3, clients=6, each=2)
    assert set(statuses) <= {200, 504}  # requests that cannot make their 1 s deadline are dropped, never hung
    cut = _batching(srv.http, "tight")
    assert cut["cap_cuts"] > 0 and cut["batch_cap"] < grown["batch_cap"]
    assert cut["batch_time_p99_ns"] > 0 and _metric(srv, "tuili_batch_time_p99_seconds", "tight") > 0
