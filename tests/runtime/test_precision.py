"""The precision policy: what a session runs at, what it refuses, and bf16 kept within bounds."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tuili.errors import ConfigError
from tuili.runtime import cpu, precision
from tuili.runtime.cli import drift
from tuili.runtime.session import InferenceSession

needs_bf16 = pytest.mark.skipif(precision.native_bf16() is None, reason="this CPU has no native bf16")


@pytest.fixture
def masked_cpu(monkeypatch):
    """This process's CPU as if without native bf16 (cpu.info() is cached: cleared around the test)."""
    monkeypatch.setenv(cpu.MASK_ENV, "avx512_bf16,amx_bf16")
    cpu.info.cache_clear()
    yield
    monkeypatch.delenv(cpu.MASK_ENV)
    cpu.info.cache_clear()


def _conv_gemm_model(path) -> str:
    """x -> Conv+Relu -> Conv + residual -> Relu -> GlobalAveragePool -> Flatten -> Gemm(transB) -> y,
    and a MatMul branch: t -> MatMul(W) + b -> z."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n) for n, s in [
        ("w1", (8, 4, 3, 3)), ("b1", (8,)), ("w2", (8, 8, 3, 3)), ("wg", (5, 8)), ("bg", (5,)),
        ("wm", (16, 6)), ("bm", (6,))]]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1),
        helper.make_node("MatMul", ["t", "wm"], ["m"]),
        helper.make_node("Add", ["m", "bm"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8]),
        helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 3, 16])], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return str(path)


@pytest.fixture
def model(tmp_path):
    return _conv_gemm_model(tmp_path / "m.onnx")


def _feeds(n=3):
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, 4, 8, 8)).astype(np.float32),
            "t": rng.standard_normal((n, 3, 16)).astype(np.float32)}


def test_unknown_precision_lists_the_valid_ones(model):
    with pytest.raises(ConfigError, match="'fp16' is not one of fp32, bf16, auto"):
        InferenceSession(model, precision="fp16")


def test_fp32_is_the_default_and_runs_nothing_in_bf16(model):
    sess = InferenceSession(model)
    assert sess.precision == "fp32" and sess.bf16_nodes == {}


def test_onnxruntime_engine_refuses_reduced_precision(model):
    with pytest.raises(ConfigError, match="engine='onnxruntime' runs fp32 only"):
        InferenceSession(model, engine="onnxruntime", precision="bf16")


def test_bf16_without_native_bf16_is_refused_naming_the_feature(model, masked_cpu):
    assert precision.native_bf16() is None
    with pytest.raises(ConfigError, match="avx512_bf16") as e:
        InferenceSession(model, precision="bf16")
    assert "amx_bf16" in str(e.value)


def test_auto_without_native_bf16_stays_fp32_and_says_why(model, masked_cpu):
    sess = InferenceSession(model, precision="auto")
    assert sess.precision == "fp32" and sess.bf16_nodes == {}
    assert "neither amx_bf16 nor avx512_bf16" in sess.precision_decision.reason
    from tuili.runtime import sysinfo

    assert "auto -> fp32" in sysinfo.render(sysinfo.collect())


@needs_bf16
@pytest.mark.parametrize("requested", ["bf16", "auto"])
def test_bf16_runs_the_multiply_ops_and_keeps_dtypes(model, requested):
    ref = InferenceSession(model)
    sess = InferenceSession(model, precision=requested)
    assert sess.precision == "bf16"
    # the optimizer fuses Conv+Relu and Conv+Add+Relu; MatMul+Add becomes a tuili::FusedMatMul
    assert sum(sess.bf16_nodes.values()) == 4, sess.bf16_nodes
    assert sess.bf16_nodes.get("Gemm") == 1
    feeds = _feeds()
    want, got = ref.run(None, feeds), sess.run(None, feeds)
    for w, g in zip(want, got):
        assert g.dtype == np.float32 and g.shape == w.shape and g.flags.c_contiguous
        d = drift(g, w)
        assert 0 < d["max"] <= 0.02 * max(1.0, float(np.abs(w).max())), d


@needs_bf16
def test_auto_marks_only_safe_ops():
    d = precision.decide("auto")
    assert d.precision == "bf16" and d.ops <= precision.SAFE_OPS
    assert precision.decide("bf16").ops >= d.ops


def test_tuili_backend_takes_precision(model, tmp_path):
    from tuili.backends.tuili import TuiliBackend
    from tuili.model_config import ModelConfig

    assert "precision" in TuiliBackend.parameter_keys
    config = ModelConfig()
    config.parameters["precision"].string_value = "fp16"
    with pytest.raises(ConfigError, match="fp16"):
        TuiliBackend().open_session(model, config)
    config.parameters["precision"].string_value = "auto"
    sess = TuiliBackend().open_session(model, config)
    assert sess.precision == ("bf16" if precision.native_bf16() else "fp32")


@needs_bf16
def test_run_cli_compares_bf16_with_fp32(model, capsys):
    from tuili.cli import main

    assert main(["run", model, "--random", "--dim", "N=4", "--precision", "bf16", "--compare", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16" in out and "tuili::FusedMatMul 1" in out
    assert "max |tuili bf16 - fp32| =" in out and "top-1 agreement" in out
