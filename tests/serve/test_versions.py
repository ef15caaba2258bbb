"""Two versions of one model served at once keep separate state: their python model objects (and
module globals), their instance workers and their statistics, as worker processes and as threads,
and their sequences (the same correlation id on both versions is two sequences)."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as th

from tests.serve.repo_builder import _save, _write
from tests.serve.test_sequence import state_model

# Counts its calls twice over: on the model object and in a module global; answers [version, object count, global count].
COUNTER_PY = '''
import os
import numpy as np
import triton_python_backend_utils as pb_utils

CALLS = 0


class TritonPythonModel:
    def initialize(self, args):
        self.version = float(args["model_version"])
        self.calls = 0

    def execute(self, requests):
        global CALLS
        out = []
        for r in requests:
            self.calls += 1
            CALLS += 1
            y = np.array([[self.version, self.calls, CALLS, os.getpid()]], np.float64)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
        return out
'''


def _counter_model(root: str, name: str, isolation: str) -> None:
    for v in ("1", "2"):
        _write(f"{root}/{name}/{v}/model.py", COUNTER_PY)
    _write(f"{root}/{name}/config.pbtxt", f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 0
        version_policy: {{ all {{ }} }}
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP64 dims: [ 1, 4 ] }} ]
        parameters {{ key: "instance_isolation" value: {{ string_value: "{isolation}" }} }}
    """)


@pytest.fixture(scope="module")
def versions_server(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("versions_repo"))
    _counter_model(root, "counter_process", "process")
    _counter_model(root, "counter_thread", "thread")
    for v in ("1", "2"):  # an accumulator whose sum is implicit sequence state
        _save(state_model(), f"{root}/acc/{v}/model.onnx")
    _write(f"{root}/acc/config.pbtxt", """
        name: "acc"
        backend: "onnxruntime"
        max_batch_size: 8
        version_policy: { all { } }
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "START_SEEN" data_type: TYPE_FP32 dims: [ 1 ] } ]
        sequence_batching {
          direct { }
          control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ]
          state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
        }
    """)
    srv = server_factory(root)
    yield srv
    srv.stop()


@pytest.mark.parametrize("model", ["counter_process", "counter_thread"])
def test_two_versions_keep_separate_state(versions_server, model):
    c = th.InferenceServerClient(versions_server.http)
    x = th.InferInput("X", [1], "FP32")
    x.set_data_from_numpy(np.zeros(1, np.float32))

    def call(version: str) -> list[float]:
        return c.infer(model, [x], model_version=version).as_numpy("Y").reshape(-1).tolist()

    answers = [(v, call(v)) for v in ("1", "2", "1", "1", "2")]
    seen = {"1": [], "2": []}
    for v, (version, calls, module_calls, pid) in answers:
        assert version == float(v)
        seen[v].append((calls, module_calls, pid))
    assert [a[:2] for a in seen["1"]] == [(1, 1), (2, 2), (3, 3)]  # version 1 counted only its own calls
    assert [a[:2] for a in seen["2"]] == [(1, 1), (2, 2)]
    pids = {v: {a[2] for a in seen[v]} for v in seen}
    assert len(pids["1"]) == len(pids["2"]) == 1
    if model == "counter_process":  # each version's instance is a worker of its own
        assert pids["1"] != pids["2"]
    stats = {s["version"]: s for s in c.get_inference_statistics(model)["model_stats"]}
    assert stats["1"]["inference_count"] == 3 and stats["2"]["inference_count"] == 2
    assert stats["1"]["execution_count"] == 3 and stats["2"]["execution_count"] == 2
    c.close()


def test_two_versions_keep_separate_sequences(versions_server):
    c = th.InferenceServerClient(versions_server.http)
    sums = {"1": 0.0, "2": 0.0}
    steps = [("1", 1.0), ("2", 10.0), ("1", 2.0), ("2", 20.0), ("1", 3.0)]
    for k, (v, value) in enumerate(steps):
        x = th.InferInput("X", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[value]], np.float32))
        first = k < 2
        r = c.infer("acc", [x], model_version=v, sequence_id=77, sequence_start=first, sequence_end=k >= 3)
        sums[v] += value
        assert r.as_numpy("Y")[0, 0] == sums[v], (k, v)
    c.close()
