"""An HTTP client that disconnects while its request is queued takes the request out of the queue:
it never runs (uvicorn does not cancel the handler; the adapter watches for http.disconnect)."""
from __future__ import annotations

import concurrent.futures as cf
import json
import socket

import numpy as np
import pytest
import tritonclient.http as th

from tests.serve.repo_builder import SLEEPY_PY, pending_requests, python_model, wait_for

WAIT_S = 30.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("disconnect_repo"))
    # sleeps X seconds, then echoes X
    python_model(root, "slow", SLEEPY_PY, "instance_group [ { count: 1 kind: KIND_CPU } ]")
    s = server_factory(root)
    yield s
    s.stop()


def infer(url: str, seconds: float) -> float:
    c = th.InferenceServerClient(url, network_timeout=WAIT_S, connection_timeout=WAIT_S)
    try:
        x = th.InferInput("X", [1], "FP32")
        x.set_data_from_numpy(np.array([seconds], np.float32))
        return float(c.infer("slow", [x]).as_numpy("Y")[0])
    finally:
        c.close()


def send_and_leave_open(address: str, seconds: float) -> socket.socket:
    """A raw HTTP infer request whose connection the caller closes before the answer."""
    host, port = address.split(":")
    body = json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [seconds]}]}).encode()
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    sock.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return sock


def test_a_disconnected_clients_queued_request_never_runs(srv):
    before = _executions(srv)
    with cf.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(infer, srv.http, 2.0)  # holds the only instance
        wait_for(lambda: pending_requests(srv, "slow") == 1)
        sock = send_and_leave_open(srv.http, 0.0)
        wait_for(lambda: pending_requests(srv, "slow") == 2)  # queued behind `busy`
        sock.close()
        wait_for(lambda: pending_requests(srv, "slow") == 1)  # it left the queue...
        assert not busy.done()  # ...while `busy` still ran, so it did not leave by running
        assert busy.result(WAIT_S) == 2.0
    assert infer(srv.http, 0.0) == 0.0  # FIFO, one instance: a request still queued would run first
    assert _executions(srv) == before + 2  # `busy` and the last one; the disconnected one never ran


def test_a_client_that_disconnects_while_its_request_runs_leaves_the_server_serving(srv):
    sock = send_and_leave_open(srv.http, 0.3)
    wait_for(lambda: pending_requests(srv, "slow") == 1)
    sock.close()
    wait_for(lambda: pending_requests(srv, "slow") == 0)
    assert infer(srv.http, 0.0) == 0.0


def _executions(srv) -> int:
    return th.InferenceServerClient(srv.http).get_inference_statistics("slow")["model_stats"][0]["execution_count"]
