"""int8 execution in a session (runtime.int8): QDQ models from tuili's and onnxruntime's quantizers run
on oneDNN's int8 kernels where the CPU sums u8*s8 exactly, within one quantization step of onnxruntime;
with those features masked (TUILI_CPU_MASK) nothing is folded and the float path gives the same bar."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import tuili
from tests.passes.test_qdq_fold import conv_matmul, ort_run, output_step, quantized
from tuili.runtime import cpu
from tuili.runtime import int8 as int8_policy

NO_INT8_DOT = "avx512_vnni,avx_vnni,amx"
X = np.random.default_rng(1).standard_normal((6, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def no_vnni(monkeypatch):
    monkeypatch.setenv(cpu.MASK_ENV, NO_INT8_DOT)
    cpu.info.cache_clear()
    yield
    monkeypatch.delenv(cpu.MASK_ENV)
    cpu.info.cache_clear()


@pytest.fixture(scope="module")
def qdq(tmp_path_factory) -> onnx.ModelProto:
    return quantized(conv_matmul(), (3, 8, 8), tmp_path_factory.mktemp("int8"))


def _steps(model: onnx.ModelProto, sess: tuili.InferenceSession) -> float:
    return float(np.abs(sess.run(None, {"x": X})[0] - ort_run(model, X)).max() / output_step(model))


@pytest.mark.skipif(not int8_policy.decide().enabled, reason="needs VNNI/AMX and torch's oneDNN int8 ops")
def test_qdq_model_runs_on_int8_kernels(qdq):
    sess = tuili.InferenceSession(qdq)
    assert sess.int8_decision.enabled and "oneDNN" in sess.int8_decision.reason
    assert sess.int8_nodes == {"QLinearConv": 2, "QLinearMatMul": 2}
    assert _steps(qdq, sess) <= 1 + 1e-4
    assert tuili.InferenceSession(qdq, opt_level=1).int8_nodes == {}  # level 1 does not fuse


def test_without_vnni_qdq_stays_float(no_vnni, qdq):
    decision = int8_policy.decide()
    assert not decision.enabled and "avx512_vnni" in decision.reason
    sess = tuili.InferenceSession(qdq)
    assert sess.int8_nodes == {}
    assert "QLinearConv" not in sess.optimization_report.after
    assert _steps(qdq, sess) <= 1 + 1e-4


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_onnxruntime_quantizer_models(tmp_path, fmt):
    """onnxruntime's own quantizer: its QDQ groups fold, its QLinearConv/QLinearMatMul run as they are."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": X[i:i + 2]} for i in range(0, 6, 2)])

        def get_next(self):
            return next(self.feeds, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(conv_matmul(), src)
    q.quantize_static(str(src), str(dst), Reader(), quant_format=getattr(q.QuantFormat, fmt), per_channel=True,
                      op_types_to_quantize=["Conv", "MatMul"])
    model = onnx.load(dst)
    sess = tuili.InferenceSession(model)
    if int8_policy.decide().enabled:
        assert sess.int8_nodes.get("QLinearConv") == 2
    ref = ort_run(model, X)
    # the float output reads a quantized MatMul output: a step of it, times the largest |weight| row sum
    # of nothing (the Add is float here), so the bar is one step of the last quantized tensors
    scales = [float(onnx.numpy_helper.to_array(t)) for t in model.graph.initializer
              if t.name.endswith("_scale") and onnx.numpy_helper.to_array(t).size == 1]
    assert np.abs(sess.run(None, {"x": X})[0] - ref).max() <= 2 * max(scales)


def _gemm_input_step_bound(model: onnx.ModelProto) -> float:
    """How far one quantization step of every input of the final Gemm(DQ(x_q), DQ(w_q)) can move its
    output: x_scale times the largest column sum of |W|."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in reversed(model.graph.node) if n.op_type == "Gemm")
    dq_x, dq_w = producer[gemm.input[0]], producer[gemm.input[1]]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in (*gemm.attribute, *dq_w.attribute)}
    scale = inits[dq_w.input[1]].astype(np.float64)
    w = inits[dq_w.input[0]] * (scale.reshape([-1 if i == attrs.get("axis", 1) else 1 for i in range(2)])
                                if scale.size > 1 else scale)
    w = w.T if attrs.get("transB") else w  # (K, N)
    return float(inits[dq_x.input[1]]) * float(np.abs(w).sum(axis=0).max())


@pytest.mark.parametrize("name", ["digits_cnn", "glyphs_cnn"])
def test_zoo_cnns_from_tuili_quantize(tmp_path, name):
    from tuili import zoo
    from tuili.compress.quant import quantize_static

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    zoo.export(name, src)
    feeds = zoo.example_inputs(name, batch=8)
    quantize_static(src, dst, feeds, method="minmax")
    model = onnx.load(dst)
    sess = tuili.InferenceSession(model)
    if int8_policy.decide().enabled:
        assert sess.int8_nodes.get("QLinearConv", 0) >= 4
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    bound = _gemm_input_step_bound(model)
    assert bound < 0.5 * np.abs(ref).max()  # a bar that a wrong kernel would miss
    assert np.abs(sess.run(None, feeds)[0] - ref).max() <= bound


def test_a_float_model_is_not_asked_about_int8(conv_net):
    sess = tuili.InferenceSession(conv_net)
    assert not sess.int8_decision.enabled and sess.int8_decision.reason == "the model has no quantized nodes"
    assert sess.int8_nodes == {}
