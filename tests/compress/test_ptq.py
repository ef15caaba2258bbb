"""Static and dynamic quantization end to end on small models: the QDQ graph, its numbers in
onnxruntime and tuili's engine, the weights' per-channel scales, the CLI and bad input."""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import tuili
from tuili.cli import main
from tuili.compress.quant import RandomReader, model_inputs, quantize_dynamic, quantize_static
from tuili.compress.quant.prepare import load_model
from tuili.errors import ConfigError, InvalidInputError

from ._models import mlp, residual_cnn, save


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _calib(n=64, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)}


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture
def cnn(tmp_path):
    return save(residual_cnn(), tmp_path / "cnn.onnx")


def test_static_qdq_structure_and_report(cnn, tmp_path):
    out = tmp_path / "cnn.int8.onnx"
    report = quantize_static(cnn, out, _calib(), method="minmax")
    m = onnx.load(out)
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["Relu"] == 0 and ops["Softmax"] == 1  # Relus folded into Q; Softmax float by rule
    assert ops["QuantizeLinear"] == 7  # x, conv1->relu1, pool1 (shared), conv2, add->relu2, gap, flatten (shared)
    assert report.quantized == Counter({"Conv": 2, "Add": 1, "GlobalAveragePool": 1, "Gemm": 1, "MaxPool": 1,
                                        "Flatten": 1})
    assert report.folded == Counter({"Relu": 2})
    assert [(f.op_type, f.reason) for f in report.float_nodes] == [("Softmax", "accuracy: probabilities need more "
                                                                    "than 8 bits, kept float by rule")]
    assert report.samples == 64 and report.size_after < report.size_before + 4000
    types = {t.name: t.data_type for t in m.graph.initializer}
    assert types["w1_quantized"] == onnx.TensorProto.INT8 and types["b1_quantized"] == onnx.TensorProto.INT32
    assert "w1" not in types  # the float weights are gone
    # onnxruntime fuses every group into its int8 kernels
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert fused["QLinearConv"] == 2 and fused["QLinearAdd"] == 1 and fused["QGemm"] == 1
    assert fused["Conv"] == 0 and fused["DequantizeLinear"] == 0


def test_weights_per_channel_scales_match_numpy(cnn, tmp_path):
    out = tmp_path / "q.onnx"
    quantize_static(cnn, out, _calib(), reduce_range=False)
    inits, w = _inits(onnx.load(out)), _inits(residual_cnn())
    for name, axis in (("w1", 0), ("w2", 0), ("fc_w", 1)):
        red = tuple(i for i in range(w[name].ndim) if i != axis)
        expected = np.abs(w[name]).max(axis=red) / 127
        np.testing.assert_allclose(inits[f"{name}_quantized_scale"], expected, rtol=1e-6)
        q, s = inits[f"{name}_quantized"], np.expand_dims(expected, red)
        assert np.abs(q).max() == 127 and np.all(inits[f"{name}_quantized_zero_point"] == 0)
        assert np.all(np.abs(q * s - w[name]) <= s / 2 + 1e-7)
    # bias: int32 at x_scale * w_scale, zero point 0
    x_scale = inits["x_scale"]
    np.testing.assert_allclose(inits["b1_quantized_scale"], x_scale * inits["w1_quantized_scale"], rtol=1e-6)
    assert inits["b1_quantized"].dtype == np.int32


def test_reduce_range_keeps_seven_bits(cnn, tmp_path):
    out = tmp_path / "q7.onnx"
    quantize_static(cnn, out, _calib(), reduce_range=True)
    inits = _inits(onnx.load(out))
    assert np.abs(inits["w2_quantized"]).max() == 64


def test_onnxruntime_and_tuili_agree_within_a_step(cnn, tmp_path):
    out = tmp_path / "q.onnx"
    quantize_static(cnn, out, _calib(), method="mse")
    x = _calib(16, seed=1)
    ref = _ort(cnn).run(["logits"], x)[0]
    (a,) = _ort(out).run(["logits"], x)
    (b,) = tuili.InferenceSession(str(out)).run(["logits"], x)
    inits = _inits(onnx.load(out))
    # one quantization step of the Gemm's input, carried through its weights
    step = float(inits["f_scale"]) * np.abs(inits["fc_w_quantized"] * inits["fc_w_quantized_scale"]).sum(0).max()
    assert np.abs(a - b).max() <= step
    snr = 10 * np.log10((ref**2).sum() / ((ref - a) ** 2).sum())
    assert snr > 30


def test_opset_upgrade_for_old_models(tmp_path):
    old = save(residual_cnn(opset=11), tmp_path / "old.onnx")
    out = tmp_path / "old.int8.onnx"
    quantize_static(old, out, _calib())
    m = onnx.load(out)
    assert {o.domain: o.version for o in m.opset_import}[""] >= 13
    assert _ort(out).run(None, _calib(2))[0].shape == (2, 10)


def test_input_file_is_never_modified(cnn, tmp_path):
    before = hashlib.sha256(open(cnn, "rb").read()).hexdigest()
    quantize_static(cnn, tmp_path / "q.onnx", _calib(8))
    assert hashlib.sha256(open(cnn, "rb").read()).hexdigest() == before
    with pytest.raises(ConfigError, match="is the input model"):
        quantize_static(cnn, cnn, _calib(8))


@pytest.mark.parametrize("calib, match", [
    ({"image": np.zeros((4, 1, 8, 8), np.float32)}, r"missing input\(s\) \['x'\]; unknown input\(s\) \['image'\]"),
    ({"x": np.zeros((4, 1, 8, 8), np.float64)}, "input 'x' is float64, the model expects float32"),
    ({"x": np.zeros((4, 1, 7, 8), np.float32)}, r"input 'x' has shape \(4, 1, 7, 8\).*dimension 2 differs"),
    ({"x": np.zeros((4, 8, 8), np.float32)}, "expects rank 4"),
    ({"x": np.zeros((0, 1, 8, 8), np.float32)}, "calibration set is empty"),
    ([], "calibration set is empty"),
])
def test_bad_calibration_data(cnn, tmp_path, calib, match):
    with pytest.raises(InvalidInputError, match=match):
        quantize_static(cnn, tmp_path / "q.onnx", calib)
    assert not (tmp_path / "q.onnx").exists()


def test_npz_and_iterable_and_generated_readers(cnn, tmp_path):
    data = _calib(20)
    np.savez(tmp_path / "c.npz", **data)
    r1 = quantize_static(cnn, tmp_path / "a.onnx", tmp_path / "c.npz", batch_size=7)
    r2 = quantize_static(cnn, tmp_path / "b.onnx", ({"x": data["x"][i:i + 5]} for i in range(0, 20, 5)))
    assert r1.samples == r2.samples == 20
    a, b = _inits(onnx.load(tmp_path / "a.onnx")), _inits(onnx.load(tmp_path / "b.onnx"))
    assert a["x_scale"] == b["x_scale"]  # same data, other batching: same ranges
    gen = RandomReader(model_inputs(load_model(cnn)), samples=10, batch_size=4)
    assert quantize_static(cnn, tmp_path / "g.onnx", gen).samples == 10
    with pytest.raises(InvalidInputError, match="does not exist"):
        quantize_static(cnn, tmp_path / "q.onnx", tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError, match="not a readable .npz"):
        quantize_static(cnn, tmp_path / "q.onnx", tmp_path / "bad.npz")


def test_bad_options_are_errors(cnn, tmp_path):
    with pytest.raises(ConfigError, match="unknown calibration method"):
        quantize_static(cnn, tmp_path / "q.onnx", _calib(), method="kl")
    with pytest.raises(ConfigError, match="cannot be quantized statically"):
        quantize_static(cnn, tmp_path / "q.onnx", _calib(), op_types=("Softmax",))
    with pytest.raises(ConfigError, match="does not take"):
        quantize_static(cnn, tmp_path / "q.onnx", _calib(), method="minmax", observer_options={"percentile": 99})


def test_dynamic_matmul_gemm(tmp_path):
    src = save(mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.dyn.onnx"
    report = quantize_dynamic(src, out)
    assert report.quantized == Counter({"MatMul": 1, "Gemm": 1})  # MatMul+Add was fused into Gemm first
    ops = Counter(n.op_type for n in onnx.load(out).graph.node)
    assert ops["MatMulInteger"] == 2 and ops["DynamicQuantizeLinear"] == 2 and ops["Gemm"] == 0
    x = {"x": np.random.default_rng(0).standard_normal((3, 4, 16)).astype(np.float32)}
    ref = _ort(src).run(None, x)[0]
    a = _ort(out).run(None, x)[0]
    b = tuili.InferenceSession(str(out)).run(None, x)[0]
    snr = 10 * np.log10((ref**2).sum() / ((ref - a) ** 2).sum())
    assert snr > 30
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(ref).max())


def test_cli_quantize(cnn, tmp_path, capsys):
    np.savez(tmp_path / "c.npz", **_calib(32))
    out = tmp_path / "cli.onnx"
    assert main(["quantize", cnn, "-o", str(out), "--calib", str(tmp_path / "c.npz"), "--method", "mse"]) == 0
    text = capsys.readouterr().out
    assert "method=mse" in text and "left in float (accuracy: probabilities" in text and "Conv x2" in text
    assert _ort(out).run(None, _calib(1))[0].shape == (1, 10)
    assert main(["quantize", cnn, "-o", str(out)]) == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["quantize", cnn, "-o", str(out), "--mode", "dynamic", "--calib", "c.npz"]) == 2
    assert "are for static quantization" in capsys.readouterr().err
    assert main(["quantize", cnn, "-o", str(out), "--mode", "dynamic", "--no-bias-correction"]) == 2
    assert "--no-bias-correction are for static quantization" in capsys.readouterr().err
    assert main(["quantize", cnn, "-o", str(out), "--calib", str(tmp_path / "c.npz"), "--no-bias-correction"]) == 0
    assert "bias_correction=False" in capsys.readouterr().out
    np.savez(tmp_path / "bad.npz", image=np.zeros((2, 1, 8, 8), np.float32))
    assert main(["quantize", cnn, "-o", str(out), "--calib", str(tmp_path / "bad.npz")]) == 2
    assert "unknown input(s) ['image']" in capsys.readouterr().err
