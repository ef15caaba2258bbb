"""InferenceSession: onnxruntime's calling convention, clear errors for bad feeds and unsupported ops."""
from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import tuili
from tuili.errors import ConfigError, InvalidInputError, UnsupportedOpError

F = onnx.TensorProto.FLOAT


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="act"),
             helper.make_node("MatMul", ["a", "w2"], ["logits"], name="fc2"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F, ["N", 8])],
                              [helper.make_tensor_value_info("logits", F, ["N", 3]),
                               helper.make_tensor_value_info("probs", F, ["N", 3])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def sessions():
    model = _mlp()
    return tuili.InferenceSession(model), tuili.InferenceSession(model, engine="onnxruntime")


def test_ort_calling_convention(sessions):
    sess, ref = sessions
    (x_arg,) = sess.get_inputs()
    assert (x_arg.name, x_arg.shape, x_arg.type) == ("x", ["N", 8], "tensor(float)")
    assert [o.name for o in sess.get_outputs()] == ["logits", "probs"]
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    for names in (None, ["probs"], ["probs", "logits"]):
        got, want = sess.run(names, {"x": x}), ref.run(names, {"x": x})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_concurrent_runs_are_independent(sessions):
    sess, ref = sessions
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((n + 1, 8)).astype(np.float32) for n in range(8)]
    results = [None] * len(xs)

    def work(i):
        for _ in range(20):
            results[i] = sess.run(["probs"], {"x": xs[i]})[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, r in zip(xs, results):
        np.testing.assert_allclose(r, ref.run(["probs"], {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_wrong_input_name(sessions):
    with pytest.raises(InvalidInputError, match=r"\['image'\] are not inputs.*\['x'\]"):
        sessions[0].run(None, {"image": np.zeros((1, 8), np.float32)})


def test_missing_input(sessions):
    with pytest.raises(InvalidInputError, match="input 'x' is missing"):
        sessions[0].run(None, {})


def test_wrong_dtype_names_expected_and_given(sessions):
    with pytest.raises(InvalidInputError, match=r"'x' has dtype float64, expected float32"):
        sessions[0].run(None, {"x": np.zeros((1, 8))})


def test_wrong_shape_names_dimension(sessions):
    with pytest.raises(InvalidInputError, match=r"'x' has shape \[2, 7\].*dimension 1 must be 8"):
        sessions[0].run(None, {"x": np.zeros((2, 7), np.float32)})
    with pytest.raises(InvalidInputError, match=r"rank 3.*expected rank 2"):
        sessions[0].run(None, {"x": np.zeros((1, 2, 8), np.float32)})


def test_unknown_output_name(sessions):
    with pytest.raises(InvalidInputError, match="'nope'"):
        sessions[0].run(["nope"], {"x": np.zeros((1, 8), np.float32)})


def test_unsupported_op_names_op_domain_opset_node():
    node = helper.make_node("FancyConv", ["x"], ["y"], name="layer7", domain="")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F, [1])],
                              [helper.make_tensor_value_info("y", F, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match=r"FancyConv.*ai\.onnx.*opset 17.*'layer7'.*similar supported ops: .*Conv"):
        tuili.InferenceSession(model)


def test_subgraph_reads_outer_scope_values():
    """An If branch that reads a value of the enclosing graph (captured at run time)."""
    then_g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["r"])], "then", [],
                               [helper.make_tensor_value_info("r", F, [2])])
    else_g = helper.make_graph([helper.make_node("Sub", ["a", "b"], ["r2"])], "else", [],
                               [helper.make_tensor_value_info("r2", F, [2])])
    nodes = [helper.make_node("Neg", ["x"], ["a"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    b = numpy_helper.from_array(np.array([10, 20], np.float32), "b")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2]),
                                           helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", F, [2])], [b])
    sess = tuili.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.array([1, 2], np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x, "c": np.array(True)})[0], [9, 18])
    np.testing.assert_array_equal(sess.run(None, {"x": x, "c": np.array(False)})[0], [-11, -22])


def test_outputs_never_alias_feeds_or_weights():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    nodes = [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Identity", ["w"], ["weight"])]
    shape = numpy_helper.from_array(np.array([-1], np.int64), "shape")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2, 2])],
                              [helper.make_tensor_value_info(n, F, None) for n in ("same", "flat", "weight")], [w, shape])
    sess = tuili.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.zeros((2, 2), np.float32)
    same, flat, weight = sess.run(None, {"x": x})
    same[:] = 5
    flat[:] = 6
    weight[:] = 7
    assert (x == 0).all()
    np.testing.assert_array_equal(sess.run(["weight"], {"x": x})[0], np.ones((2, 2), np.float32))


def test_threads_limit_applies_only_during_run():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    sess = tuili.InferenceSession(_mlp(), threads=1)
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[1], tuili.InferenceSession(_mlp()).run(None, {"x": x})[1],
                               rtol=1e-6)
    assert blas_threads() == before


def test_onnxruntime_arguments_are_honoured_or_refused():
    import onnxruntime as ort

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = tuili.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.array([-1, 2], np.float32)})[0].tolist() == [0, 2]
    for kwargs, word in [({"providers": ["CUDAExecutionProvider"]}, "CUDAExecutionProvider"),
                         ({"providers": [("CPUExecutionProvider", {"arena": "1"})]}, "provider_options")]:
        with pytest.raises(ConfigError, match=word):
            tuili.InferenceSession(model, **kwargs)
    with pytest.raises(TypeError, match="unknown_option"):
        tuili.InferenceSession(model, unknown_option=1)
    ro = ort.RunOptions()
    ro.only_execute_path_to_fetches = True
    with pytest.raises(ConfigError, match="only_execute_path_to_fetches"):
        sess.run(None, {"x": np.zeros(2, np.float32)}, ro)


def test_sess_options_that_map_to_tuili_take_effect(tmp_path):
    import json

    import onnxruntime as ort

    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    want = tuili.InferenceSession(_mlp(), engine="onnxruntime").run(None, {"x": x})
    assert len(tuili.InferenceSession(_mlp(), sess_options=ort.SessionOptions()).plan.steps) == \
        len(tuili.InferenceSession(_mlp()).plan.steps)  # onnxruntime's defaults change nothing
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = tuili.InferenceSession(_mlp(), sess_options=so)
    assert sess.threads == 1
    assert sess.optimization_report is None and len(sess.plan.steps) == 4  # O0: no pass, the graph as written
    saved = tuili.InferenceSession(str(tmp_path / "optimized.onnx"))
    for s in (sess, saved):
        for got, w in zip(s.run(None, {"x": x}), want):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    sess.run(None, {"x": x})
    path = sess.end_profiling()
    assert path.startswith(str(tmp_path / "prof_")) and path.endswith(".json")
    with open(path) as f:
        events = json.load(f)
    runs = [e for e in events if e["cat"] == "Session"]
    nodes = [e for e in events if e["cat"] == "Node"]
    assert len(runs) == 2 and sorted({e["args"]["op_name"] for e in nodes}) == ["MatMul", "Relu", "Softmax"]
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["ts"] >= 0 for e in events) and len(nodes) == 8
    assert tuili.InferenceSession(_mlp()).end_profiling() == ""  # not profiling


@pytest.mark.parametrize("field,value", [("enable_mem_pattern", False), ("enable_cpu_mem_arena", False),
                                         ("inter_op_num_threads", 2), ("log_severity_level", 3),
                                         ("use_deterministic_compute", True), ("logid", "x")])
def test_sess_options_without_an_equivalent_are_refused_by_name(field, value):
    import onnxruntime as ort

    so = ort.SessionOptions()
    setattr(so, field, value)
    with pytest.raises(ConfigError, match=rf"SessionOptions field\(s\) {field} have no equivalent"):
        tuili.InferenceSession(_mlp(), sess_options=so)
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    with pytest.raises(ConfigError, match="execution_mode"):
        tuili.InferenceSession(_mlp(), sess_options=so)


def test_sess_options_that_disagree_with_arguments_are_refused():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    with pytest.raises(ConfigError, match="threads=1 and SessionOptions.intra_op_num_threads=2 disagree"):
        tuili.InferenceSession(_mlp(), threads=1, sess_options=so)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ConfigError, match="opt_level=3 .* disagree"):
        tuili.InferenceSession(_mlp(), opt_level=3, sess_options=so)


def test_sess_options_on_the_onnxruntime_engine_are_onnxruntime_s(tmp_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "ort")
    sess = tuili.InferenceSession(_mlp(), engine="onnxruntime", sess_options=so)
    sess.run(None, {"x": np.zeros((1, 8), np.float32)})
    assert sess.end_profiling().startswith(str(tmp_path / "ort"))


def test_opt_level_reaches_onnxruntime():
    import onnxruntime as ort

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for level, name in [(0, "ORT_DISABLE_ALL"), (3, "ORT_ENABLE_ALL")]:
        sess = tuili.InferenceSession(model, engine="onnxruntime", opt_level=level)
        assert sess._ort.get_session_options().graph_optimization_level.name == name
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ConfigError, match="disagree"):
        tuili.InferenceSession(model, engine="onnxruntime", opt_level=3, sess_options=so)
    with pytest.raises(ConfigError, match="opt_level must be"):
        tuili.InferenceSession(model, engine="onnxruntime", opt_level=7)
