"""Per-shape kernel choice by measurement (runtime.tuning, `tuili tune`)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tuili
from tuili.cli import main
from tuili.runtime import tuning

pytest.importorskip("torch")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private choices file for the test (the shared one is per process)."""
    monkeypatch.setenv("TUILI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_SHARED", None)
    return tmp_path / "tuning.json"


@pytest.fixture
def model_path(tmp_path):
    """MaxPool -> LayerNormalization -> Gelu: three nodes numpy and torch can both run."""
    rng = np.random.default_rng(0)
    scale = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "scale")
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("LayerNormalization", ["p", "scale"], ["n"], axis=-1),
             helper.make_node("Gelu", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scale])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    return path


def reference(path, x):
    return tuili.InferenceSession(str(path), opt_level=0).run(None, {"x": x})[0]


def test_tuning_measures_records_and_keeps_results(cache, model_path):
    x = np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32)
    sess = tuili.InferenceSession(str(model_path), tune=True)
    y = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(y, reference(model_path, x), rtol=1e-5, atol=1e-5)
    entries = json.loads(cache.read_text())
    assert len(entries) == 3  # one per node and input signature
    for entry in entries.values():
        assert entry["chosen"] in entry["seconds"] and len(entry["seconds"]) == 2


def test_a_recorded_choice_is_used_without_measuring(cache, model_path):
    x = np.ones((1, 4, 16, 16), np.float32)
    tuili.InferenceSession(str(model_path), tune=True).run(None, {"x": x})
    entries = json.loads(cache.read_text())
    for entry in entries.values():  # pretend numpy won everywhere
        entry["chosen"] = tuning.GENERIC
    cache.write_text(json.dumps(entries))
    tuning._SHARED = None
    sess = tuili.InferenceSession(str(model_path))
    sess.run(None, {"x": x})
    tunables = [s.fn for s in sess.plan.steps if isinstance(s.fn, tuning.Tunable)]
    assert len(tunables) == 3
    for t in tunables:
        assert list(t.chosen.values()) == [t.candidates[tuning.GENERIC]]
    # a shape never measured runs the prepared kernel, and nothing is written without tune=True
    sess.run(None, {"x": np.ones((3, 4, 16, 16), np.float32)})
    assert len(json.loads(cache.read_text())) == 3
    assert all(t.candidates[t.default] in t.chosen.values() for t in tunables)


def test_an_unreadable_choices_file_is_measured_again(cache, model_path):
    cache.write_text("{not json")
    x = np.ones((1, 4, 16, 16), np.float32)
    tuili.InferenceSession(str(model_path), tune=True).run(None, {"x": x})
    assert len(json.loads(cache.read_text())) == 3


def test_tune_command(cache, model_path, capsys):
    assert main(["tune", str(model_path), "--batch", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "| MaxPool | 1x4x16x16 |" in out and "| MaxPool | 2x4x16x16 |" in out and str(cache) in out
    assert main(["tune", str(model_path), "--batch", "0"]) == 2
    assert main(["tune", str(model_path), "--batch", "a"]) == 2


def test_tune_is_a_tuili_engine_option(model_path):
    with pytest.raises(tuili.TuiliError, match="tune=True"):
        tuili.InferenceSession(str(model_path), engine="onnxruntime", tune=True)
