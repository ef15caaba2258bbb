"""The sequence batcher with the official tritonclient: correlation ids (uint64 and string) over HTTP,
gRPC and gRPC streaming, interleaved sequences with per-sequence results, control inputs as
configured, implicit state (onnxruntime and tuili backends, zero and file initial state), direct
binding to an instance, the idle limit and the refusals."""
from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import _save, _write
from tuili.errors import ConfigError
from tuili.model_config import parse_model_config
from tuili.serve.sequence import SequenceSettings, sequence_flags

# A python accumulator that keeps its sums itself, by correlation id, reading the control inputs.
ACCUMULATOR_PY = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.cid_dtype = pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(cfg, "CID")["data_type"])
        self.instance = int(args["model_instance_name"].rsplit("_", 1)[1])
        self.sums = {}

    def execute(self, requests):
        out = []
        for r in requests:
            get = lambda n: pb_utils.get_input_tensor_by_name(r, n).as_numpy()
            x, start, end, ready, cid = get("X"), get("START"), get("END"), get("READY"), get("CORRID")
            key = cid.reshape(-1)[0]
            key = key.decode() if isinstance(key, bytes) else int(key)
            if start.reshape(-1)[0]:
                self.sums[key] = 0.0
            self.sums[key] += float(x.reshape(-1)[0])
            flags = np.array([[int(start.reshape(-1)[0]), int(end.reshape(-1)[0]), int(ready.reshape(-1)[0] > 0)]], np.int32)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", np.array([[self.sums[key]]], np.float32)),
                pb_utils.Tensor("FLAGS", flags),
                pb_utils.Tensor("CID", np.array([[cid.reshape(-1)[0]]], dtype=self.cid_dtype)),
                pb_utils.Tensor("INST", np.array([[self.instance]], np.int32))]))
            if end.reshape(-1)[0]:
                del self.sums[key]
        return out
'''


def _accumulator(root: str, name: str, corrid_type: str, strategy: str) -> None:
    _write(f"{root}/{name}/1/model.py", ACCUMULATOR_PY)
    cid = "TYPE_STRING" if corrid_type == "TYPE_STRING" else "TYPE_UINT64"
    _write(f"{root}/{name}/config.pbtxt", f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 4
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "FLAGS" data_type: TYPE_INT32 dims: [ 3 ] }},
                 {{ name: "CID" data_type: {cid} dims: [ 1 ] }}, {{ name: "INST" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        instance_group [ {{ count: 2 kind: KIND_CPU }} ]
        sequence_batching {{
          {strategy}
          max_sequence_idle_microseconds: 400000
          control_input [
            {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
            {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] }} ] }},
            {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] }} ] }},
            {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid_type} }} ] }}
          ]
        }}
    """)


def state_model() -> onnx.ModelProto:
    """Y = STATE_IN + X, STATE_OUT = Y, START_SEEN = START: an accumulator whose sum is implicit state."""
    t = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1])  # noqa: E731
    g = helper.make_graph([helper.make_node("Add", ["STATE_IN", "X"], ["Y"]),
                           helper.make_node("Identity", ["Y"], ["STATE_OUT"]),
                           helper.make_node("Identity", ["START"], ["START_SEEN"])], "acc",
                          [t("X"), t("START"), t("STATE_IN")], [t("Y"), t("STATE_OUT"), t("START_SEEN")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _state(root: str, name: str, backend: str, strategy: str, initial: str) -> None:
    _save(state_model(), f"{root}/{name}/1/model.onnx")
    _write(f"{root}/{name}/config.pbtxt", f"""
        name: "{name}"
        backend: "{backend}"
        max_batch_size: 8
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "START_SEEN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        sequence_batching {{
          {strategy}
          control_input [ {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] }} ] }} ]
          state [ {{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ] {initial} }} ]
        }}
    """)


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("sequences"))
    _accumulator(root, "acc_py", "TYPE_UINT64", "direct { }")
    _accumulator(root, "acc_py_str", "TYPE_STRING", "oldest { max_candidate_sequences: 8 }")
    _state(root, "acc_onnx", "onnxruntime", "oldest { max_candidate_sequences: 16 preferred_batch_size: [ 4 ] "
                                            "max_queue_delay_microseconds: 2000 }", "")
    _state(root, "acc_tuili", "tuili", "direct { max_queue_delay_microseconds: 1000 minimum_slot_utilization: 0.5 }",
           'initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "start.bin" }')
    os.makedirs(f"{root}/acc_tuili/initial_state")
    np.array([1000.0], np.float32).tofile(f"{root}/acc_tuili/initial_state/start.bin")
    return server_factory(root)


def _x(v: float, grpc: bool = False):
    mod = tg if grpc else th
    i = mod.InferInput("X", [1, 1], "FP32")
    i.set_data_from_numpy(np.array([[v]], np.float32))
    return [i]


def _steps(n_seq: int, length: int):
    """Interleaved (sequence index, step, value) so that every sequence's requests alternate with the others'."""
    return [(s, k, float(10 * s + k + 1)) for k in range(length) for s in range(n_seq)]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_interleaved_sequences_python_model_control_inputs(seq_server, protocol):
    grpc = protocol == "grpc"
    c = tg.InferenceServerClient(seq_server.grpc) if grpc else th.InferenceServerClient(seq_server.http)
    ids = [1001, 2**40 + 7, 3]
    length = 4
    sums, instances = [0.0] * 3, [set() for _ in ids]
    try:
        for s, k, v in _steps(3, length):
            r = c.infer("acc_py", _x(v, grpc), sequence_id=ids[s], sequence_start=k == 0, sequence_end=k == length - 1)
            sums[s] += v
            assert r.as_numpy("Y")[0, 0] == sums[s]
            assert r.as_numpy("FLAGS").tolist() == [[int(k == 0), int(k == length - 1), 1]]
            assert r.as_numpy("CID")[0, 0] == ids[s]
            instances[s].add(int(r.as_numpy("INST")[0, 0]))
        assert all(len(i) == 1 for i in instances)  # direct: a sequence stays on one instance
        assert {i.pop() for i in instances} == {0, 1}  # and sequences spread over both
        # the sequence ended: a non-start request for it is refused
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            c.infer("acc_py", _x(1, grpc), sequence_id=ids[0])
    finally:
        c.close()


@pytest.mark.parametrize("model", ["acc_onnx", "acc_tuili"])
def test_implicit_state_over_grpc(seq_server, model):
    base = 1000.0 if model == "acc_tuili" else 0.0  # the tuili model's initial state comes from a file
    c = tg.InferenceServerClient(seq_server.grpc)
    try:
        sums = [base] * 3
        for s, k, v in _steps(3, 3):
            r = c.infer(model, _x(v, True), sequence_id=50 + s, sequence_start=k == 0, sequence_end=k == 2)
            sums[s] += v
            assert r.as_numpy("Y")[0, 0] == sums[s]
            assert r.as_numpy("START_SEEN")[0, 0] == (1.0 if k == 0 else 0.0)
            assert r.get_output("STATE_OUT") is None  # the state is the server's, not the client's
        # a new START on a used id starts again from the initial state
        r = c.infer(model, _x(5, True), sequence_id=50, sequence_start=True, sequence_end=True)
        assert r.as_numpy("Y")[0, 0] == base + 5
    finally:
        c.close()


def test_concurrent_sequences_are_batched_and_stay_correct(seq_server):
    """Many sequences at once from many threads: the batcher forms batches of different sequences,
    and each sequence still sees its own sum."""
    n_seq, length = 12, 6
    errors = []

    def run(s: int) -> None:
        c = tg.InferenceServerClient(seq_server.grpc)
        try:
            total = 0.0
            for k in range(length):
                v = float(s * 100 + k)
                r = c.infer("acc_onnx", _x(v, True), sequence_id=9000 + s, sequence_start=k == 0, sequence_end=k == length - 1)
                total += v
                if r.as_numpy("Y")[0, 0] != total:
                    errors.append((s, k, r.as_numpy("Y")[0, 0], total))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append((s, repr(e)))
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(s,)) for s in range(n_seq)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    stats = th.InferenceServerClient(seq_server.http).get_inference_statistics("acc_onnx")["model_stats"][0]
    assert stats["inference_count"] > stats["execution_count"]  # some batches held several sequences


def test_grpc_streaming_interleaved(seq_server):
    results: queue.Queue = queue.Queue()
    c = tg.InferenceServerClient(seq_server.grpc)
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        steps = _steps(3, 3)
        for n, (s, k, v) in enumerate(steps):
            c.async_stream_infer("acc_tuili", _x(v, True), request_id=str(n), sequence_id=700 + s,
                                 sequence_start=k == 0, sequence_end=k == 2)
        got = {}
        for _ in steps:
            result, error = results.get(timeout=20)
            assert error is None, error
            got[int(result.get_response().id)] = result.as_numpy("Y")[0, 0]
        sums = [1000.0] * 3
        for n, (s, _k, v) in enumerate(steps):
            sums[s] += v
            assert got[n] == sums[s]
    finally:
        c.stop_stream()
        c.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_string_correlation_ids(seq_server, protocol):
    grpc = protocol == "grpc"
    c = tg.InferenceServerClient(seq_server.grpc) if grpc else th.InferenceServerClient(seq_server.http)
    ids = [f"user-{protocol}-a", f"user-{protocol}-b"]
    sums = [0.0, 0.0]
    try:
        for s, k, v in _steps(2, 3):
            r = c.infer("acc_py_str", _x(v, grpc), sequence_id=ids[s], sequence_start=k == 0, sequence_end=k == 2)
            sums[s] += v
            assert r.as_numpy("Y")[0, 0] == sums[s]
            assert r.as_numpy("CID")[0, 0] == ids[s].encode()
        with pytest.raises(InferenceServerException, match="CORRID control is a string"):
            c.infer("acc_py_str", _x(1, grpc), sequence_id=12, sequence_start=True)
        with pytest.raises(InferenceServerException, match="CORRID control is an integer"):
            c.infer("acc_py", _x(1, grpc), sequence_id="abc", sequence_start=True)
    finally:
        c.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_refusals(seq_server, protocol):
    grpc = protocol == "grpc"
    c = tg.InferenceServerClient(seq_server.grpc) if grpc else th.InferenceServerClient(seq_server.http)
    bad = "StatusCode.INVALID_ARGUMENT" if grpc else "400"
    try:
        for model in ("acc_py", "acc_onnx"):
            with pytest.raises(InferenceServerException, match="must specify a non-zero or non-empty correlation ID") as e:
                c.infer(model, _x(1, grpc))
            assert e.value.status() == bad
            with pytest.raises(InferenceServerException, match="must specify the START flag") as e:
                c.infer(model, _x(1, grpc), sequence_id=424242)
            assert e.value.status() == bad
    finally:
        c.close()


def test_idle_sequence_is_released_and_its_next_request_told(seq_server):
    c = th.InferenceServerClient(seq_server.http)
    try:
        assert c.infer("acc_py_str", _x(2), sequence_id="sleeper", sequence_start=True).as_numpy("Y")[0, 0] == 2
        assert c.infer("acc_py_str", _x(3), sequence_id="sleeper").as_numpy("Y")[0, 0] == 5
        time.sleep(1.0)  # max_sequence_idle_microseconds is 400000
        with pytest.raises(InferenceServerException, match="released after being idle") as e:
            c.infer("acc_py_str", _x(1), sequence_id="sleeper")
        assert e.value.status() == "400"
        # starting it again works, from scratch
        assert c.infer("acc_py_str", _x(7), sequence_id="sleeper", sequence_start=True,
                       sequence_end=True).as_numpy("Y")[0, 0] == 7
    finally:
        c.close()


# ------------------------------------------------------------------ settings, no server
def _settings(text: str) -> SequenceSettings:
    return SequenceSettings(parse_model_config('name: "m"\nmax_batch_size: 2\n' + text, validate=False))


def test_control_tensors_as_configured():
    s = _settings("""sequence_batching { control_input [
        { name: "S" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ -1, 2.5 ] } ] },
        { name: "E" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 7, 9 ] } ] },
        { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64 } ] } ] }""")
    f = s.control_feeds(sequence_flags({"sequence_id": 77, "sequence_start": True}), 2)
    assert f["S"].dtype == np.float32 and f["S"].tolist() == [[2.5], [2.5]]
    assert f["E"].dtype == np.int32 and f["E"].tolist() == [[7], [7]]
    assert f["C"].dtype == np.int64 and f["C"].tolist() == [[77], [77]]
    assert s.strategy == "direct" and s.idle_ns == 1_000_000_000  # Triton's defaults
    assert sequence_flags({"sequence_id": 0}) is None and sequence_flags({"sequence_id": ""}) is None


@pytest.mark.parametrize("text,match", [
    ('control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 1 ] } ] } ]', "two values"),
    ('control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_CORRID } ] } ]', "takes data_type"),
    ('control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]', "not an integer"),
    ('oldest { }', "max_candidate_sequences"),
    ('state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 1 ] initial_state { dims: [ -1 ] zero_data: true } } ]',
     "fixed sizes"),
])
def test_bad_sequence_settings_are_config_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        _settings(f"sequence_batching {{ {text} }}")
