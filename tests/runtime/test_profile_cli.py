"""`tuili profile` and the roofline analysis: exact FLOP counts on hand-computed models, the Chrome
trace, the memory plan and clear errors."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import tuili
from tuili.cli import main
from tuili.runtime import roofline
from tuili.runtime.profile import profile

F = onnx.TensorProto.FLOAT


@pytest.fixture(autouse=True)
def peaks_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUILI_CACHE_DIR", str(tmp_path / "cache"))


def small_model() -> onnx.ModelProto:
    """Conv(3->4, 3x3, pad 1, bias) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm(64->5, C) ;
    a MatMul on a second input."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             [("w", (4, 3, 3, 3)), ("b", (4,)), ("g", (64, 5)), ("c", (5,)), ("m", (7, 3))]]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "g", "c"], ["y"], name="gemm"),
             helper.make_node("MatMul", ["t", "m"], ["z"], name="matmul")]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8]),
                                               helper.make_tensor_value_info("t", F, ["N", 5, 7])],
                              [helper.make_tensor_value_info("y", F, ["N", 5]),
                               helper.make_tensor_value_info("z", F, ["N", 5, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "small.onnx"
    onnx.save(small_model(), path)
    return path


def test_flops_and_bytes_are_exact():
    sess = tuili.InferenceSession(small_model(), opt_level=0)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((2, 3, 8, 8), dtype=np.float32), "t": rng.random((2, 5, 7), dtype=np.float32)}
    costs = {c.step.node: c for c in roofline.analyse(profile(sess, feeds, runs=1))}
    conv_out = 2 * 4 * 8 * 8
    assert costs["conv"].flops == 2 * conv_out * 3 * 3 * 3 + conv_out   # + bias
    assert costs["relu"].flops == conv_out
    assert costs["pool"].flops == (conv_out // 4) * 4
    assert costs["flatten"].flops == 0
    assert costs["gemm"].flops == 2 * (2 * 5) * 64 + 2 * 5              # + C
    assert costs["matmul"].flops == 2 * (2 * 5 * 3) * 7
    assert costs["relu"].nbytes == 2 * conv_out * 4                     # read once, written once
    assert costs["gemm"].nbytes == 4 * (2 * 64 + 64 * 5 + 5 + 2 * 5)


def test_bound_follows_the_ridge():
    peaks = roofline.Peaks(gflops=100.0, gbytes=50.0, key="test")  # ridge 2 FLOP/B
    sess = tuili.InferenceSession(small_model(), opt_level=0)
    feeds = {"x": np.ones((1, 3, 8, 8), np.float32), "t": np.ones((1, 5, 7), np.float32)}
    costs = {c.step.node: c for c in roofline.analyse(profile(sess, feeds, runs=1))}
    assert costs["relu"].intensity < peaks.ridge and costs["relu"].bound(peaks) == "memory"
    assert costs["conv"].intensity > peaks.ridge and costs["conv"].bound(peaks) == "compute"


def test_profile_cli_writes_trace_plot_and_memory_plan(model_path, tmp_path, capsys):
    trace, plot = tmp_path / "trace.json", tmp_path / "roofline.png"
    assert main(["profile", str(model_path), "-O", "0", "--batch", "3", "--runs", "2", "--trace", str(trace),
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "batch 3, 6 steps" in out and "memory plan: arena" in out and "GFLOP/s" in out
    events = json.loads(trace.read_text())
    nodes = [e for e in events if e["cat"] == "Node"]
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    assert len(nodes) == 6 * 2                                 # one complete event per step and run
    assert sum(e["cat"] == "Session" for e in events) == 2
    assert {e["args"]["op_name"] for e in nodes} == {"Conv", "Relu", "MaxPool", "Flatten", "Gemm", "MatMul"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "cache" / "peaks.json").is_file()     # peaks cached per CPU


def test_profile_cli_clear_errors(model_path, tmp_path, capsys):
    assert main(["profile", str(tmp_path / "missing.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["profile", str(model_path), "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
    fixed = small_model()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed, path)
    assert main(["profile", str(path), "--batch", "4"]) == 2
    assert "fixed batch dimension 1" in capsys.readouterr().err
