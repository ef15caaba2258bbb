"""Backpressure and deadlines against a real `tuili serve`: a full queue refuses at once (503), a
request past its deadline is dropped before it runs (504), a client that gives up frees its queue
slot, a negative timeout is the client's error (400), and a 10x overload is answered, never hung."""
from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import SLEEPY_PY, pending_requests, python_model, wait_for

WAIT_S = 10.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("backpressure_repo"))
    # sleeps X seconds, then echoes X
    python_model(root, "slow", SLEEPY_PY, "dynamic_batching { default_queue_policy { max_queue_size: 4 } }")
    s = server_factory(root)
    yield s
    s.stop()


def call(url: str, seconds: float, timeout_us: int | None = None):
    """(status, message or answer) of one HTTP request; a hang raises."""
    c = th.InferenceServerClient(url, network_timeout=WAIT_S, connection_timeout=WAIT_S)
    i = th.InferInput("X", [1], "FP32")
    i.set_data_from_numpy(np.array([seconds], np.float32))
    try:
        return 200, c.infer("slow", [i], timeout=timeout_us).as_numpy("Y")
    except InferenceServerException as e:
        if e.status() is None:
            raise
        return int(e.status()), e.message()
    finally:
        c.close()


def executions(url: str) -> int:
    c = th.InferenceServerClient(url)
    return c.get_inference_statistics("slow")["model_stats"][0]["execution_count"]


def test_expired_request_is_dropped_before_it_runs(srv):
    before = executions(srv.http)
    with cf.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(call, srv.http, 1.0)
        wait_for(lambda: pending_requests(srv, "slow") >= 1)  # `busy` holds the only instance
        late = pool.submit(call, srv.http, 0.0, 100_000)
        status, msg = late.result(WAIT_S)
        assert status == 504 and "did not run" in msg, msg
        assert not busy.done()  # answered while the model was still busy: it waited no longer than its deadline
        assert busy.result(WAIT_S)[0] == 200
    assert executions(srv.http) == before + 1  # only `busy` ran


def test_negative_timeout_is_a_client_error(srv):
    status, msg = call(srv.http, 0.0, -5)
    assert status == 400 and "timeout" in msg


def test_a_client_that_gives_up_frees_its_queue_slot(srv):
    """The queue holds 4; 4 gRPC clients give up while queued; 4 new requests then fit."""
    with cf.ThreadPoolExecutor(10) as pool:
        busy = pool.submit(call, srv.http, 1.5)
        wait_for(lambda: pending_requests(srv, "slow") >= 1)
        g = tg.InferenceServerClient(srv.grpc)

        def impatient():
            i = tg.InferInput("X", [1], "FP32")
            i.set_data_from_numpy(np.array([0.0], np.float32))
            with pytest.raises(InferenceServerException, match="Deadline"):
                g.infer("slow", [i], client_timeout=0.3)

        list(pool.map(lambda _: impatient(), range(4)))
        wait_for(lambda: pending_requests(srv, "slow") == 1)  # their requests left the queue; only `busy` is left
        later = [pool.submit(call, srv.http, 0.0) for _ in range(4)]
        assert [f.result(WAIT_S)[0] for f in later] == [200] * 4
        assert busy.result(WAIT_S)[0] == 200


def test_ten_times_overload_is_refused_fast_and_never_hangs(srv):
    """One instance, 50 ms a request, a queue of 4: 50 clients at once. Every request is answered;
    the ones that do not fit get 503 at once, the accepted ones run or expire (1 s deadline)."""
    with cf.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: call(srv.http, 0.05, 1_000_000), range(50)))
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503, 504}, results
    assert statuses.count(503) >= 10 and statuses.count(200) >= 1
    assert all("is full" in m for s, m in results if s == 503)
    assert srv.proc.poll() is None

