"""SLO-adaptive batching (serve/batching.py): the AIMD policy on its own, and on a real `tuili serve`
whose python model takes as long as its requests ask: the batch cap grows under a loose objective
and is cut under a tight one, reported in the statistics and the metrics."""
from __future__ import annotations

import concurrent.futures as cf
import urllib.request

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import python_model
from tuili.errors import ConfigError
from tuili.model_config import parse_model_config
from tuili.serve.batching import BACKOFF, WINDOW, FixedBatching, SloBatching, percentile, slo_ns

MS = 1_000_000


def test_aimd_grows_while_full_batches_are_fast_and_cuts_when_slow():
    p = SloBatching(max_batch=16, preferred=[], delay_ns=0, slo_ns=100 * MS)  # budget: 50 ms per batch
    assert p.cap == 1
    for _ in range(5):
        p.observe(p.cap, 10 * MS)  # full at the cap, well within the budget
    assert p.cap == 6
    p.observe(2, 10 * MS)  # a batch below the cap says nothing about a larger one
    assert p.cap == 6
    p.observe(6, 80 * MS)  # over the budget: multiplicative cut, and the window starts afresh
    assert p.cap == int(6 * BACKOFF) and len(p.window) == 0
    p.observe(p.cap, 10 * MS)
    assert p.cap == int(6 * BACKOFF) + 1  # the slow batch no longer counts
    for _ in range(100):
        p.observe(p.cap, 10 * MS)
    assert p.cap == 16  # never above max_batch_size
    for _ in range(100):
        p.observe(p.cap, 60 * MS)
    assert p.cap == 1  # and never below 1
    assert p.describe()["batch_cap"] == 1 and p.describe()["slo_ms"] == 100


def test_the_p99_is_over_a_window_of_recent_batches():
    p = SloBatching(max_batch=1000, preferred=[], delay_ns=0, slo_ns=100 * MS)
    for _ in range(WINDOW * 2):
        p.observe(1, 1 * MS)
    assert len(p.window) == WINDOW and p.p99_ns == 1 * MS
    assert percentile([5, 1, 3, 2, 4], 50) == 3 and percentile(range(1, 101), 99) == 99


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


def test_the_cap_grows_under_a_loose_objective(srv):
    statuses = _load(srv.http, "loose", 0.001, clients=12, each=15)
    assert set(statuses) == {200}
    b = _batching(srv.http, "loose")
    assert b["cap_increases"] > 0 and b["batch_cap"] > 1 and b["cap_cuts"] == 0
    assert b["slo_ms"] == 10000 and b["max_batch_size"] == 16
    assert _metric(srv, "tuili_batch_cap", "loose") == b["batch_cap"]
    assert _metric(srv, "tuili_slo_seconds", "loose") == 10.0


def test_the_cap_is_cut_under_a_tight_objective(srv):
    _load(srv.http, "tight", 0.001, clients=12, each=15)  # fast batches: the cap grows
    grown = _batching(srv.http, "tight")
    assert grown["batch_cap"] > 1
    # each request now takes 0.3 s: two in a batch are over the 0.5 s budget (half of slo_ms 1000)
    statuses = _load(srv.http, "tight", 0.3, clients=6, each=2)
    assert set(statuses) <= {200, 504}  # requests that cannot make their 1 s deadline are dropped, never hung
    cut = _batching(srv.http, "tight")
    assert cut["cap_cuts"] > 0 and cut["batch_cap"] < grown["batch_cap"]
    assert cut["batch_time_p99_ns"] > 0 and _metric(srv, "tuili_batch_time_p99_seconds", "tight") > 0
