"""InferenceServer in-process: loading errors, ensemble cycles, model states and dependents, the Runner interface."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.errors import ConfigError, InvalidInputError, ModelNotFoundError, ServerBusyError
from tuili.serve.core import InferenceServer
from tuili.serve.ensemble import EnsembleRunner
from tuili.serve.lifecycle import Model, ModelState
from tuili.serve.runner import Runner
from tuili.serve.scheduler import Scheduler
from tuili.serve.types import InferInput, InferRequest, RequestedOutput

ENS = """
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 16 ] }} ]
ensemble_scheduling {{ step [ {{ model_name: "{step}" model_version: -1
  input_map {{ key: "INPUT0" value: "INPUT0" }} input_map {{ key: "INPUT1" value: "INPUT1" }}
  output_map {{ key: "OUTPUT0" value: "OUT" }} }} ] }}
"""


@pytest.fixture
def repo(tmp_path):
    _save(add_sub_model(), str(tmp_path / "add_sub" / "1" / "model.onnx"))
    _write(str(tmp_path / "ens_ok" / "config.pbtxt"), ENS.format(name="ens_ok", step="add_sub"))
    _write(str(tmp_path / "ens_a" / "config.pbtxt"), ENS.format(name="ens_a", step="ens_b"))
    _write(str(tmp_path / "ens_b" / "config.pbtxt"), ENS.format(name="ens_b", step="ens_a"))
    _write(str(tmp_path / "broken" / "config.pbtxt"), 'name: "broken"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    (tmp_path / "broken" / "1").mkdir()
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    return str(tmp_path)


def _req(model, n=2):
    a = np.ones((n, 16), np.float32)
    return InferRequest(model, inputs=[InferInput("INPUT0", "FP32", [n, 16], a), InferInput("INPUT1", "FP32", [n, 16], a)])


def test_explicit_loading_and_errors(repo):
    async def main():
        core = InferenceServer(repo, "explicit")
        await core.start()
        assert core.repository_index() == [
            {"name": n, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} for n in ["add_sub", "broken", "ens_a", "ens_b", "ens_ok"]
        ]
        await core.load_model("ens_ok")  # loads add_sub too
        assert core.model_ready("add_sub")
        resp = await core.infer(_req("ens_ok"))
        np.testing.assert_array_equal(resp.outputs[0].data, np.full((2, 16), 2, np.float32))
        with pytest.raises(ConfigError, match="cycle"):
            await core.load_model("ens_a")
        with pytest.raises(Exception, match="broken"):
            await core.load_model("broken")
        idx = {m["name"]: m for m in core.repository_index()}
        assert idx["broken"]["state"] == "UNAVAILABLE" and idx["broken"]["reason"]
        with pytest.raises(ModelNotFoundError):
            await core.infer(_req("broken"))
        with pytest.raises(InvalidInputError, match="no output"):
            r = _req("add_sub")
            r.outputs = [RequestedOutput("nope")]
            await core.infer(r)
        st = core.model_statistics("add_sub")["model_stats"][0]
        assert st["inference_stats"]["success"]["count"] == 1  # the ensemble's step
        assert st["inference_stats"]["fail"]["count"] == 1
        await core.unload_model("add_sub")
        assert not core.model_ready("add_sub")
        await core.stop()
    asyncio.run(main())


def test_unload_dependents_and_the_runner_interface(repo):
    async def main():
        core = InferenceServer(repo, "explicit")
        await core.start()
        await core.load_model("ens_ok")
        assert core.models.dependencies.dependents("add_sub") == ["ens_ok"]
        ens, step = core.get_model("ens_ok"), core.get_model("add_sub")
        assert isinstance(ens.runner, EnsembleRunner) and isinstance(step.runner, Scheduler)
        assert all(isinstance(mv.runner, Runner) for mv in (ens, step))
        results = await asyncio.gather(*(core.infer(_req("ens_ok")) for _ in range(4)))
        assert all(r.outputs[0].data.shape == (2, 16) for r in results)
        assert ens.runner.inflight == 0 and step.runner.inflight == 0
        await core.unload_model("add_sub", unload_dependents=True)
        assert not core.model_ready("ens_ok") and not core.model_ready("add_sub")
        assert core.models.dependencies.dependents("add_sub") == []
        idx = {m["name"]: m for m in core.repository_index()}
        assert idx["ens_ok"]["state"] == idx["add_sub"]["state"] == ModelState.UNAVAILABLE
        with pytest.raises(ServerBusyError, match="unloading"):  # a retired runner refuses work
            await ens.runner.enqueue({}, 1)
        await core.stop()
    asyncio.run(main())


def test_lifecycle_transitions():
    m = Model("m")
    assert m.state == ModelState.UNAVAILABLE
    m.move(ModelState.LOADING)
    m.move(ModelState.READY)
    with pytest.raises(RuntimeError, match="READY -> UNAVAILABLE"):
        m.move(ModelState.UNAVAILABLE)  # a ready model unloads through UNLOADING
    m.move(ModelState.UNLOADING)
    m.move(ModelState.UNAVAILABLE, "unloaded")
    assert (m.state, m.reason) == (ModelState.UNAVAILABLE, "unloaded")
