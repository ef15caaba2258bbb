"""`tuili perf` against a real `tuili serve`: both protocols, shared memory, request-rate mode,
the server's statistics breakdown, the output files, and bad input."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tuili.bench.perf.load import Settings
from tuili.bench.perf.run import Options, run_sync
from tuili.errors import InvalidInputError

QUICK = Settings(window_s=0.3, stability=10.0, max_windows=3, warmup_s=0.1)


def _opts(server, proto: str, **kw) -> Options:
    url = server.http if proto == "http" else server.grpc
    return Options(model=kw.pop("model", "add_sub"), url=url, protocol=proto, settings=QUICK, **kw)


@pytest.mark.parametrize("proto", ["http", "grpc"])
@pytest.mark.parametrize("shm", ["none", "system"])
def test_concurrency_sweep(server, proto, shm):
    res = run_sync(_opts(server, proto, levels=[1, 3], batch=2, shared_memory=shm))
    assert [p.level for p in res.points] == [1, 3]
    assert res.payload_bytes == 2 * 2 * 16 * 4  # two FP32 [2, 16] inputs
    for p in res.points:
        assert p.requests > 0 and p.errors == 0, p.errors_seen
        assert p.throughput > 0 and p.latency(50) <= p.latency(99)
        b = p.server_breakdown()
        assert b is not None and b["compute_infer"] > 0 and b["request"] >= b["compute_infer"]
        assert 1 <= b["batch"] <= 8  # the server's executions carried 2-row requests, maybe batched together


def test_shared_memory_regions_are_removed(server):
    import httpx

    run_sync(_opts(server, "http", levels=[1], shared_memory="system"))
    assert httpx.get(f"http://{server.http}/v2/systemsharedmemory/status").json() == []


def test_request_rate_mode(server):
    res = run_sync(_opts(server, "grpc", mode="rate", levels=[40], poisson=True))
    p = res.points[0]
    assert p.requests > 0 and p.errors == 0
    # an open-loop schedule of 40/s over 3 windows of 0.3 s cannot answer far more than it sent
    assert p.requests <= 40 * p.seconds * 2 + 5


def test_cli_writes_csv_json_and_plot(server, tmp_path):
    out = tmp_path / "r"
    r = subprocess.run([sys.executable, "-m", "tuili.cli", "perf", "-m", "classifier", "-u", server.http,
                        "--concurrency-range", "1:2", "--measurement-interval", "300", "--max-trials", "3",
                        "--stability-percentage", "1000", "--warmup", "0.1", "-b", "4",
                        "-f", f"{out}.csv", "--json", f"{out}.json", "--plot", f"{out}.png"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| concurrency | infer/s |" in r.stdout
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert [float(x["level"]) for x in rows] == [1.0, 2.0]
    doc = json.load(open(f"{out}.json"))
    assert doc["batch"] == 4 and all(p["errors"] == 0 for p in doc["points"])
    assert open(f"{out}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_input_data_from_npz(server, tmp_path):
    import numpy as np

    path = tmp_path / "in.npz"
    np.savez(path, x=np.ones((3, 64), np.float32))
    res = run_sync(_opts(server, "http", model="classifier", input_data=str(path)))
    assert res.points[0].errors == 0 and res.payload_bytes == 64 * 4


@pytest.mark.parametrize("kw, words", [
    ({"batch": 9}, "max_batch_size 8"),
    ({"shapes": {"NOPE": [1]}}, "NOPE"),
    ({"shared_memory": "cuda"}, "cuda"),
    ({"levels": [0]}, "positive"),
    ({"input_data": "/nonexistent.npz"}, "/nonexistent.npz"),
])
def test_bad_options_are_refused(server, kw, words):
    with pytest.raises(InvalidInputError, match=words):
        run_sync(_opts(server, "http", **kw))


def test_variable_dims_need_a_shape(server):
    with pytest.raises(InvalidInputError, match="--shape TEXT"):
        run_sync(_opts(server, "http", model="upper"))


def test_unknown_model_is_a_clear_error(server):
    r = subprocess.run([sys.executable, "-m", "tuili.cli", "perf", "-m", "no_such_model", "-u", server.http],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no_such_model" in r.stderr


@pytest.fixture(scope="module")
def stateful_server(tmp_path_factory, server_factory):
    """A sequence model (implicit state; it refuses requests without sequence flags) and a
    decoupled one (several responses per request)."""
    from tests.serve.test_decoupled import WORDS_PY, _model
    from tests.serve.test_sequence import _state

    root = str(tmp_path_factory.mktemp("perf_stateful"))
    _state(root, "acc", "onnxruntime", "direct { }", "")
    _model(root, "words", WORDS_PY)
    return server_factory(root)


@pytest.mark.parametrize("proto, streaming", [("http", False), ("grpc", False), ("grpc", True)])
def test_sequences(stateful_server, proto, streaming):
    res = run_sync(_opts(stateful_server, proto, model="acc", levels=[2], sequence_length=3, streaming=streaming))
    p = res.points[0]
    assert p.requests > 0 and p.errors == 0, p.errors_seen


def test_sequence_model_without_sequences_is_refused_up_front(stateful_server):
    from tuili.bench.perf.transport import RequestFailed

    with pytest.raises(RequestFailed, match="correlation ID"):  # the first request already says why
        run_sync(_opts(stateful_server, "http", model="acc"))

def test_streaming_a_decoupled_model(stateful_server):
    p = run_sync(_opts(stateful_server, "grpc", model="words", streaming=True)).points[0]
    assert p.requests > 0 and p.errors == 0, p.errors_seen


def test_streaming_needs_grpc(stateful_server):
    with pytest.raises(InvalidInputError, match="-i grpc"):
        run_sync(_opts(stateful_server, "http", model="words", streaming=True))
