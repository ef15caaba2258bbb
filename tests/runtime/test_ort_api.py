"""onnxruntime's Python API beyond run(): positional SessionOptions, model metadata, RunOptions,
io binding and OrtValue-like feeds; each checked against onnxruntime's own session."""
from __future__ import annotations

import json
import logging
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import tuili
from tuili.errors import ConfigError, InvalidInputError
from tuili.runtime.ort_api import IOBinding, OrtValue, RunOptions, RunTerminatedError

F = onnx.TensorProto.FLOAT


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["y"], name="act"),
             helper.make_node("Sigmoid", ["h"], ["p"], name="sig")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("y", F, ["N", 3]),
                               helper.make_tensor_value_info("p", F, ["N", 3])], [w], doc_string="graph doc")
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests",
                          doc_string="model doc", domain="ai.tuili.test", model_version=7)
    helper.set_model_props(m, {"author": "tuili", "labels": "a,b,c"})
    return m


X = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    m = _model()
    return tuili.InferenceSession(m), ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_modelmeta_has_onnxruntimes_fields(pair):
    sess, ref = pair
    got, want = sess.get_modelmeta(), ref.get_modelmeta()
    for f in ("producer_name", "graph_name", "domain", "description", "graph_description", "version",
              "custom_metadata_map"):
        assert getattr(got, f) == getattr(want, f), f
    assert got.custom_metadata_map == {"author": "tuili", "labels": "a,b,c"}
    on_ort = tuili.InferenceSession(_model(), engine="onnxruntime").get_modelmeta()
    assert on_ort.version == 7


def test_sess_options_positional_and_keyword():
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    m = _model()
    for sess in (tuili.InferenceSession(m, so), tuili.InferenceSession(m, so, ["CPUExecutionProvider"]),
                 tuili.InferenceSession(m, sess_options=so, providers=["CPUExecutionProvider"])):
        assert sess.engine == "tuili" and sess.optimization_report is None  # level 0 from the options
        np.testing.assert_allclose(sess.run(None, {"x": X})[0], np.maximum(X @ numpy_helper.to_array(
            m.graph.initializer[0]), 0), rtol=1e-6)
    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        tuili.InferenceSession(m, so, ["CUDAExecutionProvider"])
    with pytest.raises(TypeError, match="sess_options"):
        tuili.InferenceSession(m, so, sess_options=so)


def test_run_by_keyword_and_run_options(pair):
    sess, ref = pair
    want = ref.run(output_names=["p"], input_feed={"x": X}, run_options=ort.RunOptions())
    for ro in (ort.RunOptions(), RunOptions()):
        ro.logid = "req-1"
        got = sess.run(output_names=["p"], input_feed={"x": X}, run_options=ro)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    ro = RunOptions()
    ro.log_severity_level = 7
    with pytest.raises(ConfigError, match="log_severity_level"):
        sess.run(None, {"x": X}, ro)
    with pytest.raises(ConfigError, match="run config entry"):
        RunOptions().add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    with pytest.raises(ConfigError, match="no field"):
        sess.run(None, {"x": X}, object())


def test_run_options_log_with_their_tag(pair, caplog):
    sess, _ = pair
    ro = RunOptions()
    ro.log_severity_level, ro.log_verbosity_level, ro.logid = 0, 1, "req-42"
    with caplog.at_level(logging.INFO, logger="tuili.runtime.run"):
        sess.run(None, {"x": X}, ro)
    assert any("req-42" in r.getMessage() for r in caplog.records)
    caplog.clear()
    ro.log_severity_level = 2  # warnings only: the run's own messages stay quiet
    with caplog.at_level(logging.INFO, logger="tuili.runtime.run"):
        sess.run(None, {"x": X}, ro)
    assert not caplog.records


def test_terminate_stops_a_run_before_and_during_it(pair):
    sess, ref = pair
    ro = RunOptions()
    ro.terminate = True
    with pytest.raises(RunTerminatedError, match="terminate"):
        sess.run(None, {"x": X}, ro)
    ort_ro = ort.RunOptions()
    ort_ro.terminate = True
    with pytest.raises(Exception, match="(?i)terminat"):
        ref.run(None, {"x": X}, ort_ro)
    # set by another thread while the run is under way: the run stops at the next step boundary
    ro = RunOptions()
    slow = tuili.InferenceSession(_model(), opt_level=0)
    started = threading.Event()

    def hook_then_terminate(step, inputs, result, seconds):  # another thread's terminate, after the first step
        if not started.is_set():
            started.set()
            ro.terminate = True

    slow._trace = None
    orig = slow._execute
    slow._execute = lambda plan, ordered, hook=None: orig(plan, ordered, lambda *a: (hook_then_terminate(*a), hook(*a)))
    with pytest.raises(RunTerminatedError, match="after node"):
        slow.run(None, {"x": X}, ro)
    assert started.is_set()
    ro.terminate = False
    assert slow.run(None, {"x": X}, ro)[0].shape == (2, 3)


def test_ortvalue_inputs_tuilis_and_onnxruntimes(pair):
    sess, ref = pair
    want = ref.run(None, {"x": X})
    for value in (OrtValue.ortvalue_from_numpy(X), ort.OrtValue.ortvalue_from_numpy(X)):
        got = sess.run(None, {"x": value})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6)
    v = OrtValue.ortvalue_from_numpy(X)
    assert (v.shape(), v.data_type(), v.device_name(), v.is_tensor()) == ([2, 4], "tensor(float)", "cpu", True)
    with pytest.raises(ConfigError, match="cuda"):
        OrtValue.ortvalue_from_numpy(X, "cuda", 0)


def test_io_binding_matches_onnxruntimes(pair):
    sess, ref = pair
    rb = ref.io_binding()
    rb.bind_cpu_input("x", X)
    rb.bind_output("y")
    rb.bind_output("p")
    ref.run_with_iobinding(rb)
    want = rb.copy_outputs_to_cpu()

    b = sess.io_binding()
    assert isinstance(b, IOBinding)
    b.bind_cpu_input("x", X)
    b.bind_output("y")
    target = OrtValue.ortvalue_from_shape_and_type([2, 3], np.float32)
    b.bind_ortvalue_output("p", target)
    sess.run_with_iobinding(b)
    got = b.copy_outputs_to_cpu()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    assert b.get_outputs()[1] is target  # the result was written into the bound value
    np.testing.assert_allclose(target.numpy(), want[1], rtol=1e-6)
    with pytest.raises(InvalidInputError, match="not an output"):
        b.bind_output("nope")
    with pytest.raises(ConfigError, match="cuda"):
        b.bind_output("y", "cuda")
    with pytest.raises(ConfigError, match="raw"):
        b.bind_input("x", "cpu", 0, np.float32, [2, 4], 12345)
    b.bind_ortvalue_output("p", OrtValue.ortvalue_from_shape_and_type([5], np.float32))
    with pytest.raises(InvalidInputError, match="bound to"):
        sess.run_with_iobinding(b)
    b.clear_binding_outputs()
    with pytest.raises(InvalidInputError, match="no outputs"):
        sess.run_with_iobinding(b)


def test_end_profiling_writes_a_chrome_trace(tmp_path):
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = tuili.InferenceSession(_model(), so)
    ro = RunOptions()
    sess.run(None, {"x": X}, ro)  # a run with options is profiled too
    path = sess.end_profiling()
    events = json.load(open(path))
    assert {e["cat"] for e in events} == {"Session", "Node"}
    assert any(e["args"].get("op_name") == "Relu" for e in events if e["cat"] == "Node")


def test_negative_dim_values_are_dynamic_as_in_onnxruntime():
    m = _model()
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # how some exporters say "dynamic"
    sess, ref = tuili.InferenceSession(m), ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [None, 4]
    for n in (1, 5):
        x = np.ones((n, 4), np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=1e-6)
