"""Decoupled python models (zero or many responses per request) with the official tritonclient's gRPC
streaming and httpx for the generate extension: responses in order with triton_final_response,
in-process and worker-process instances, errors in band, refusals on the one-answer endpoints,
and cancellation when the client goes away."""
from __future__ import annotations

import json
import os
import queue

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import _write, wait_for

# One response per word of text_input, then an empty final one; the word "boom" is answered with an error.
WORDS_PY = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import json
        self.threaded = json.loads(args["model_config"])["parameters"].get("send_from", {}).get("string_value") == "thread"

    def execute(self, requests):
        for r in requests:
            if self.threaded:  # answered after execute returned, from a thread of the model's own
                threading.Thread(target=self.answer, args=(r,)).start()
            else:
                self.answer(r)
        return None

    def answer(self, request):
        text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0].decode()
        sender = request.get_response_sender()
        for i, word in enumerate(text.split()):
            if word == "boom":
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("the word was boom")))
                continue
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", np.array([word.upper()], dtype=object)),
                                                    pb_utils.Tensor("index", np.array([i], np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

# Ticks until the client goes away, then writes how it ended into the file the config names.
TICKER_PY = '''
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.out = json.loads(args["model_config"])["parameters"]["out"]["string_value"]

    def execute(self, requests):
        for r in requests:
            tag = pb_utils.get_input_tensor_by_name(r, "text_input").as_numpy().reshape(-1)[0].decode()
            sender = r.get_response_sender()
            for i in range(500):
                if r.is_cancelled():
                    with open(f"{self.out}/{tag}", "w") as f:
                        f.write(f"cancelled after {i}")
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", np.array([f"tick {i}"], dtype=object)),
                                                        pb_utils.Tensor("index", np.array([i], np.int32))]))
                time.sleep(0.02)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def _model(root: str, name: str, source: str, parameters: str = "") -> None:
    _write(f"{root}/{name}/1/model.py", source)
    _write(f"{root}/{name}/config.pbtxt", f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }} ]
        output [ {{ name: "text_output" data_type: TYPE_STRING dims: [ 1 ] }},
                 {{ name: "index" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        model_transaction_policy {{ decoupled: true }}
        {parameters}
    """)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ticker_out"))


@pytest.fixture(scope="module")
def dc_server(tmp_path_factory, server_factory, out_dir):
    root = str(tmp_path_factory.mktemp("decoupled"))
    _model(root, "words", WORDS_PY)  # a worker process (python's default)
    _model(root, "words_thread", WORDS_PY, 'parameters [ { key: "instance_isolation" value: { string_value: "thread" } },'
                                           '{ key: "send_from" value: { string_value: "thread" } } ]')
    _model(root, "ticker", TICKER_PY, f'parameters {{ key: "out" value: {{ string_value: "{out_dir}" }} }}')
    return server_factory(root)


def _text(s: str):
    i = tg.InferInput("text_input", [1], "BYTES")
    i.set_data_from_numpy(np.array([s.encode()], dtype=object))
    return [i]


def _stream(server, model: str, texts: list[str], **kw) -> dict[str, list]:
    """Every stream message per request id: ("ok", word, index, final) or ("error", message)."""
    results: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(server.grpc)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    got: dict[str, list] = {str(n): [] for n in range(len(texts))}
    try:
        for n, t in enumerate(texts):
            c.async_stream_infer(model, _text(t), request_id=str(n), **kw)
        finals = 0
        while finals < len(texts):
            result, error = results.get(timeout=30)
            if error is not None:
                got[error.message().split("request id ")[-1]].append(("error", error.message()))
                continue
            resp = result.get_response()
            final = resp.parameters["triton_final_response"].bool_param
            finals += final
            if resp.outputs:
                got[resp.id].append(("ok", result.as_numpy("text_output")[0].decode(), int(result.as_numpy("index")[0]), final))
            else:
                got[resp.id].append(("final",))
    finally:
        c.stop_stream()
        c.close()
    return got


@pytest.mark.parametrize("model", ["words", "words_thread"])
def test_grpc_stream_many_responses_per_request(dc_server, model):
    got = _stream(dc_server, model, ["one two three", "alpha", ""], enable_empty_final_response=True)
    assert got["0"] == [("ok", "ONE", 0, False), ("ok", "TWO", 1, False), ("ok", "THREE", 2, False), ("final",)]
    assert got["1"] == [("ok", "ALPHA", 0, False), ("final",)]
    assert got["2"] == [("final",)]  # zero responses: only the empty final one


def test_grpc_stream_without_empty_final_and_errors_in_band(dc_server):
    results: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(dc_server.grpc)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        c.async_stream_infer("words", _text("a boom b"), request_id="x")
        first, second, third = (results.get(timeout=30) for _ in range(3))
        assert first[1] is None and first[0].as_numpy("text_output")[0] == b"A"
        assert second[0] is None and "the word was boom" in second[1].message()
        assert third[1] is None and third[0].as_numpy("text_output")[0] == b"B"
        with pytest.raises(queue.Empty):  # no empty final response unless asked for
            results.get(timeout=0.5)
    finally:
        c.stop_stream()
        c.close()


def test_one_answer_endpoints_refuse_decoupled_models(dc_server):
    h = th.InferenceServerClient(dc_server.http)
    g = tg.InferenceServerClient(dc_server.grpc)
    try:
        i = th.InferInput("text_input", [1], "BYTES")
        i.set_data_from_numpy(np.array([b"x"], dtype=object))
        with pytest.raises(InferenceServerException, match="decoupled transaction policy") as e:
            h.infer("words", [i])
        assert e.value.status() == "400"
        with pytest.raises(InferenceServerException, match="decoupled transaction policy") as e:
            g.infer("words", _text("x"))
        assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    finally:
        h.close()
        g.close()


def _sse(lines) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]


def test_generate_and_generate_stream(dc_server):
    base = f"http://{dc_server.http}/v2/models"
    with httpx.Client(timeout=30) as h:
        r = h.post(f"{base}/words/generate", json={"text_input": "solo"})
        assert r.status_code == 200, r.text
        assert r.json() == {"model_name": "words", "model_version": "1", "text_output": "SOLO", "index": 0}
        r = h.post(f"{base}/words/versions/1/generate", json={"text_input": "two words"})
        assert r.status_code == 400 and "use /generate_stream" in r.json()["error"]
        with h.stream("POST", f"{base}/words/generate_stream", json={"text_input": "x boom y"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = _sse(r.iter_lines())
        assert events[0]["text_output"] == "X" and events[2]["text_output"] == "Y"
        assert "the word was boom" in events[1]["error"] and len(events) == 3
        # errors before the first response are the request's status
        r = h.post(f"{base}/words/generate_stream", json={"nope": "x"})
        assert r.status_code == 400 and "has no input 'nope'" in r.json()["error"]
        r = h.post(f"{base}/missing/generate", json={"text_input": "x"})
        assert r.status_code == 404


def test_generate_stream_client_going_away_cancels_the_request(dc_server, out_dir):
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", f"http://{dc_server.http}/v2/models/ticker/generate_stream", json={"text_input": "http"}) as r:
            lines = r.iter_lines()
            ticks = [next(line for line in lines if line.startswith("data: ")) for _ in range(3)]
        assert json.loads(ticks[2][6:])["text_output"] == "tick 2"
    path = os.path.join(out_dir, "http")
    wait_for(lambda: os.path.exists(path))
    with open(path) as f:
        assert f.read().startswith("cancelled after")


def test_grpc_stream_closed_cancels_the_request(dc_server, out_dir):
    results: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(dc_server.grpc)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        c.async_stream_infer("ticker", _text("grpc"))
        for _ in range(3):
            result, error = results.get(timeout=30)
            assert error is None
    finally:
        c.stop_stream(cancel_requests=True)
        c.close()
    path = os.path.join(out_dir, "grpc")
    wait_for(lambda: os.path.exists(path))
    with open(path) as f:
        assert f.read().startswith("cancelled after")
    # the model is free again: another stream runs
    got = _stream(dc_server, "words", ["still here"], enable_empty_final_response=True)
    assert [g[1] for g in got["0"][:2]] == ["STILL", "HERE"]
