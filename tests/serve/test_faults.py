"""Fault tests: python models that raise, exit, segfault or hang, and worker processes killed
mid-batch, against a real `tuili serve`. Every request gets an answer, the server and the other
models are untouched, and the model serves again after its worker restarts."""
from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import time

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import _save, _write, add_sub_model, python_model

# X picks what the model does: 0 echo, 1 raise, 2 os._exit, 3 segfault, 4 hang, 5 echo after 0.5 s (once per batch).
FAULTY_PY = '''
import ctypes
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        marker = os.path.join(args["model_repository"], "healthy")
        if not os.path.exists(marker):
            raise RuntimeError("the marker file is missing")

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        if any(int(x.reshape(-1)[0]) == 5 for x in xs):
            time.sleep(0.5)
        out = []
        for x in xs:
            what = int(x.reshape(-1)[0])
            if what == 1:
                raise ValueError("the model raised on purpose")
            if what == 2:
                os._exit(3)
            if what == 3:
                ctypes.string_at(0)
            if what == 4:
                time.sleep(3600)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return out
'''

# An idempotent model: every run is logged (pid and X) in the file "runs" beside its config.
RETRIED_PY = '''
import os
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.runs = os.path.join(args["model_repository"], "runs")

    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            what = int(x.reshape(-1)[0])
            with open(self.runs, "a") as f:
                f.write(f"{os.getpid()} {what}\\n")
            if what == 2:
                os._exit(3)
            if what == 4:
                time.sleep(3600)
            if what == 5:
                time.sleep(0.5)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return out
'''

WAIT_S = 5.0  # every request must be answered within this (a hang fails the test)


def build_faulty_repository(root: str) -> str:
    timeout = 'parameters { key: "execution_timeout_ms" value: { string_value: "1000" } }'
    python_model(root, "faulty", FAULTY_PY, "dynamic_batching { max_queue_delay_microseconds: 20000 } " + timeout,
                 max_batch_size=8)
    _write(f"{root}/faulty/healthy", "")
    python_model(root, "retried", RETRIED_PY, 'parameters { key: "idempotent" value: { string_value: "true" } } ' + timeout)
    _save(add_sub_model(), f"{root}/add_sub/1/model.onnx")
    _write(f"{root}/add_sub/config.pbtxt", """
        name: "add_sub"
        backend: "onnxruntime"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
    """)
    return root


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, server_factory):
    repo = build_faulty_repository(str(tmp_path_factory.mktemp("faulty_repo")))
    srv = server_factory(repo)
    yield srv, repo
    srv.stop()


def infer(url: str, value: float, rows: int = 1):
    c = th.InferenceServerClient(url, network_timeout=WAIT_S, connection_timeout=WAIT_S)
    x = np.full((rows, 1), value, np.float32)
    i = th.InferInput("X", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    try:
        return c.infer("faulty", [i]).as_numpy("Y")
    finally:
        c.close()


def outcome(url: str, value: float):
    """The answer (array) or the server's error: (status, message); a hang raises."""
    try:
        return infer(url, value)
    except InferenceServerException as e:
        if e.status() is None:  # no HTTP answer at all (timeout, connection): that is the failure we test for
            raise
        return int(e.status()), e.message()


def add_sub_works(url: str) -> bool:
    c = th.InferenceServerClient(url, network_timeout=WAIT_S)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    ins = [th.InferInput("INPUT0", [1, 16], "FP32"), th.InferInput("INPUT1", [1, 16], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(a)
    return bool(np.array_equal(c.infer("add_sub", ins).as_numpy("OUTPUT0"), 2 * a))


def serves_again(url: str, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        r = outcome(url, 0)
        if isinstance(r, np.ndarray):
            return True
        assert r[0] == 503, r  # restarting: unavailable, never anything else
        time.sleep(0.1)
    return False


def worker_pids(srv) -> list[int]:
    return [int(p) for p in re.findall(r"model faulty instance 0: worker process (\d+) started", srv.log())]


def test_a_model_that_raises_answers_an_error_and_keeps_serving(faulty):
    srv, _ = faulty
    status, msg = outcome(srv.http, 1)
    assert status == 500 and "raised on purpose" in msg
    np.testing.assert_array_equal(infer(srv.http, 0), [[0.0]])
    assert len(worker_pids(srv)) == 1  # no restart was needed


@pytest.mark.parametrize("value, death", [(2, "exited with code 3"), (3, "was killed by SIGSEGV"), (4, "execution_timeout_ms=1000")])
def test_a_worker_that_dies_or_hangs_is_answered_logged_and_restarted(faulty, value, death):
    srv, _ = faulty
    started = len(worker_pids(srv))
    status, msg = outcome(srv.http, value)
    assert status == 503 and "faulty" in msg, msg
    assert death in msg or value != 4
    assert serves_again(srv.http)
    assert len(worker_pids(srv)) == started + 1
    assert death in srv.log()
    assert add_sub_works(srv.http)


def test_sigkill_mid_batch_answers_every_request_and_recovers(faulty):
    srv, _ = faulty
    np.testing.assert_array_equal(infer(srv.http, 0), [[0.0]])
    pid = worker_pids(srv)[-1]
    with cf.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(outcome, srv.http, 5) for _ in range(8)]
        time.sleep(0.2)  # the batch is inside the model (it sleeps 0.5 s)
        os.kill(pid, signal.SIGKILL)
        results = [f.result(timeout=WAIT_S) for f in futs]
    for r in results:  # each either ran before the kill or was answered 503
        assert isinstance(r, np.ndarray) or r[0] == 503, r
    assert any(not isinstance(r, np.ndarray) and "SIGKILL" in r[1] for r in results)
    assert serves_again(srv.http)
    assert f"worker process {pid} was killed by SIGKILL" in srv.log()
    assert srv.proc.poll() is None


def test_health_follows_the_workers(faulty):
    """A model whose worker is down is UNAVAILABLE in the index until it is back (here the
    restart fails until the marker file returns)."""
    srv, repo = faulty
    c = th.InferenceServerClient(srv.http, network_timeout=WAIT_S)
    np.testing.assert_array_equal(infer(srv.http, 0), [[0.0]])
    os.remove(os.path.join(repo, "faulty", "healthy"))
    try:
        assert outcome(srv.http, 2)[0] == 503
        for _ in range(300):
            if "restarting the worker failed" in srv.log():
                break
            time.sleep(0.1)
        assert "the marker file is missing" in srv.log()
        row = next(m for m in c.get_model_repository_index() if m["name"] == "faulty")
        assert row["state"] == "UNAVAILABLE" and "restarting" in row["reason"], row
        assert add_sub_works(srv.http)  # the other models are untouched
    finally:
        _write(os.path.join(repo, "faulty", "healthy"), "")
    assert serves_again(srv.http)
    row = next(m for m in c.get_model_repository_index() if m["name"] == "faulty")
    assert row["state"] == "READY"


# ----------------------------------------------------------------------------- idempotent models
def retried_outcome(url: str, value: float):
    """The answer of the idempotent model, or (status, message); a rerun waits for a restart, hence
    the longer client timeout."""
    c = th.InferenceServerClient(url, network_timeout=30.0, connection_timeout=30.0)
    i = th.InferInput("X", [1], "FP32")
    i.set_data_from_numpy(np.full(1, value, np.float32))
    try:
        return c.infer("retried", [i]).as_numpy("Y")
    except InferenceServerException as e:
        if e.status() is None:
            raise
        return int(e.status()), e.message()
    finally:
        c.close()


def runs(repo: str, value: int) -> list[int]:
    """The pids of the workers that ran X == value, in order."""
    path = os.path.join(repo, "retried", "runs")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(pid) for pid, what in (line.split() for line in f) if int(what) == value]


def test_an_idempotent_request_whose_worker_is_killed_runs_again_on_the_restarted_worker(faulty):
    srv, repo = faulty
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(retried_outcome, srv.http, 5)
        for _ in range(500):  # until the request is inside the model (it then sleeps 0.5 s)
            if runs(repo, 5):
                break
            time.sleep(0.01)
        first = runs(repo, 5)
        assert first, "the request never reached the model"
        os.kill(first[0], signal.SIGKILL)
        result = fut.result(timeout=60)
    np.testing.assert_array_equal(result, [10.0])  # answered, not 503
    pids = runs(repo, 5)
    assert len(pids) == 2 and pids[1] != pids[0], pids  # run twice, on two workers
    assert f"worker process {pids[0]} was killed by SIGKILL" in srv.log()
    assert "the model is idempotent: running the 1 request(s) once more" in srv.log()


@pytest.mark.parametrize("value, times, death", [(2, 2, "exited with code 3"), (4, 1, "execution_timeout_ms=1000")])
def test_an_idempotent_request_runs_at_most_twice_and_a_hang_not_again(faulty, value, times, death):
    """A request that kills every worker it runs on is rerun once, then answered 503; one that hangs
    past the execution timeout is not rerun (it would hang again)."""
    srv, repo = faulty
    status, msg = retried_outcome(srv.http, value)
    assert status == 503 and death in msg, msg
    assert len(runs(repo, value)) == times
    np.testing.assert_array_equal(retried_outcome(srv.http, 0), [0.0])  # serves again


# A python model whose initialize() sleeps for the seconds in the file "init_secs" beside its config (forever if absent).
SLOW_INIT_PY = '''
import os
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], "init_secs")
        time.sleep(float(open(path).read()) if os.path.exists(path) else 3600)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
'''


def _load_timeout(ms: int) -> str:
    return f'parameters {{ key: "load_timeout_ms" value: {{ string_value: "{ms}" }} }}'


def test_a_hanging_initialize_fails_the_load_and_the_server_serves_on(tmp_path, server_factory):
    """--model-load-timeout-secs (and a model's load_timeout_ms over it): a worker whose initialize() hangs is
    killed, the load fails naming the timeout, at start and through the load API, and the other models serve.
    (Every python model here has a timeout it cannot miss, or hangs: a worker's start can take seconds on a busy machine.)"""
    root = str(tmp_path / "repo")
    _save(add_sub_model(), f"{root}/add_sub/1/model.onnx")
    python_model(root, "hang_flag", SLOW_INIT_PY)  # the server's 2 s
    python_model(root, "hang_param", SLOW_INIT_PY, _load_timeout(1500))  # its own 1.5 s
    python_model(root, "slow_ok", SLOW_INIT_PY, _load_timeout(120000))  # 2.5 s: longer than the server's 2 s, allowed
    _write(f"{root}/slow_ok/init_secs", "2.5")
    srv = server_factory(root, "--model-load-timeout-secs", "2", "--model-control-mode", "explicit", "--load-model", "*")
    try:
        c = th.InferenceServerClient(srv.http, network_timeout=30)
        index = {m["name"]: m for m in c.get_model_repository_index()}
        for name, secs in (("hang_flag", "2"), ("hang_param", "1.5")):
            assert index[name]["state"] == "UNAVAILABLE", index[name]
            assert f"did not finish loading within {secs} s" in index[name]["reason"], index[name]
        assert c.is_model_ready("slow_ok") and add_sub_works(srv.http)
        # the hung workers were killed: their pids (named in the log) are gone
        pids = [int(p) for p in re.findall(r"its worker process (\d+) was killed", srv.log())]
        assert len(pids) == 2 and not any(os.path.exists(f"/proc/{p}") for p in pids), srv.log()
        # through the load API: the same failure, answered within the timeout, and the server serves on
        with pytest.raises(InferenceServerException) as e:
            c.load_model("hang_param")
        assert e.value.status() == "400" and e.value.message().startswith("failed to load 'hang_param'"), e.value.message()
        assert "did not finish loading within 1.5 s" in e.value.message() and "load_timeout_ms" in e.value.message()
        x = th.InferInput("X", [1], "FP32")
        x.set_data_from_numpy(np.array([7.0], np.float32))
        assert c.is_server_live() and add_sub_works(srv.http) and c.infer("slow_ok", [x]).as_numpy("Y").tolist() == [7.0]
        c.close()
    finally:
        srv.stop()
