"""QAT: fake-quant copies in torch, fine-tuning, and the export to QDQ ONNX with the learned scales."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import tuili
from tuili.compress.quant import export_qat, finetune_qat, prepare_qat, qtype, quantize_static
from tuili.errors import ConfigError, InvalidInputError

from ._models import residual_cnn


def _digits():
    from tuili import zoo

    return zoo.create("digits_cnn", seed=0), zoo.digits_data()


@pytest.fixture(scope="module")
def digits():
    return _digits()


def _run_ort(path, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _inits(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _learned_weight_scales(qm) -> list[np.ndarray]:
    return [layer.weight_quant.exported() for layer in qm.qat_layers().values()]


def test_prepare_copies_folds_batchnorm_and_matches_float_at_start(digits):
    model, data = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qm = prepare_qat(model, data.x_train[:256], weight_bits=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is untouched
    assert qm.settings["batchnorm_folded"] == 4 and len(qm.qat_layers()) == 5  # 4 Conv + 1 Linear
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qm.modules())
    x = torch.from_numpy(data.x_test[:64])
    with torch.no_grad():
        ref, out = model(x), qm(x)
    assert float((ref.argmax(1) == out.argmax(1)).float().mean()) >= 0.95  # 8 bits: close to float


def test_export_uses_learned_scales_and_engines_agree(digits, tmp_path):
    model, data = digits
    qm = prepare_qat(model, data.x_train[:256], weight_bits=8, activation_bits=8, reduce_range=False)
    finetune_qat(qm, (data.x_train[:256], data.y_train[:256]), epochs=1, batch_size=64, progress=False)
    path = tmp_path / "digits.qat.onnx"
    report = export_qat(qm, path, data.x_train[:128])
    assert report.mode == "qat" and report.quantized["Conv"] == 4 and report.quantized["Gemm"] == 1
    inits = _inits(path)
    # every learned per-channel weight scale is in the model, as DequantizeLinear's scale; a channel's
    # scale is only ever raised, where its int32 bias would overflow (a degenerate, near-zero scale)
    scales = [v for k, v in inits.items() if k.endswith("_weight_quantized_scale") or "_quantized_scale" in k]
    def carries(s, learned) -> bool:
        if s.shape != learned.shape or np.any(s < learned * (1 - 1e-6)):
            return False
        return bool(np.isclose(s, learned, rtol=1e-6, atol=0).mean() >= 0.5)

    for learned in _learned_weight_scales(qm):
        assert any(carries(s, learned) for s in scales)
    # the first Conv reads the learned (scale, zero point) of its input quantizer
    first = next(iter(qm.qat_layers().values())).act.exported()
    x_scale = [v for k, v in inits.items() if k.startswith("/Mul_output_0_scale")]
    assert x_scale and float(x_scale[0]) == float(first[0])
    # int8 weights per channel, int32 biases
    assert any(v.dtype == np.int8 and v.ndim == 4 for v in inits.values())
    assert any(v.dtype == np.int32 and v.ndim == 1 for v in inits.values())
    x = data.x_test[:96]
    exact = _run_ort(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    fused = _run_ort(path, x)
    # level 1 runs the QDQ graph in float (no int8 fold: runtime.int8), as onnxruntime's reference does
    as_float = tuili.InferenceSession(str(path), opt_level=1).run(None, {"input": x})[0]
    np.testing.assert_allclose(as_float, exact, rtol=0, atol=1e-4 * np.abs(exact).max())
    mine = tuili.InferenceSession(str(path)).run(None, {"input": x})[0]  # int8 kernels where the CPU has them
    assert np.abs(mine - fused).max() <= 0.02 * np.abs(exact).max()  # onnxruntime's fused integer kernels
    with torch.no_grad():
        trained = qm(torch.from_numpy(x)).numpy()
    assert float((trained.argmax(1) == exact.argmax(1)).mean()) >= 0.95  # the model exported is the one trained


def test_four_bit_weights_stay_on_the_grid(digits, tmp_path):
    model, data = digits
    qm = prepare_qat(model, data.x_train[:128], weight_bits=4)
    path = tmp_path / "w4.onnx"
    export_qat(qm, path, data.x_train[:64])
    weights = [v for v in _inits(path).values() if v.dtype == np.int8]
    assert weights and all(v.min() >= -7 and v.max() <= 7 for v in weights)
    assert qm.settings["weight_bits"] == 4 and qm.settings["reduce_range"] is False


def test_w4a4_exports_int4_uint4_at_opset_21(digits, tmp_path):
    model, data = digits
    qm = prepare_qat(model, data.x_train[:128], weight_bits=4, activation_bits=4, weight_type="int4")
    path = tmp_path / "w4a4.onnx"
    export_qat(qm, path, data.x_train[:64])
    m = onnx.load(str(path))
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 21
    types = {t.data_type for t in m.graph.initializer}
    assert onnx.TensorProto.INT4 in types and onnx.TensorProto.UINT4 in types
    x = data.x_test[:32]
    exact = _run_ort(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    basic = _run_ort(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    # level 1 runs the QDQ graph in float (no int8 fold: runtime.int8), as onnxruntime's reference does
    as_float = tuili.InferenceSession(str(path), opt_level=1).run(None, {"input": x})[0]
    np.testing.assert_allclose(as_float, exact, rtol=0, atol=1e-4 * np.abs(exact).max())
    np.testing.assert_allclose(basic, exact, rtol=0, atol=1e-4 * np.abs(exact).max())
    # the default session folds to int8 kernels where the CPU has them: as close as onnxruntime's fused graph
    mine = tuili.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(mine, exact, rtol=0, atol=max(1e-4 * np.abs(exact).max(), np.abs(basic - exact).max()))


def test_layers_reading_one_tensor_share_a_quantizer(tmp_path):
    class TwoHeads(nn.Module):  # two convs read x; BatchNorm after a conv outside any Sequential
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            y = torch.relu(self.bn(self.a(x))) + self.b(x)
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    m = TwoHeads().eval()
    x = np.random.default_rng(0).standard_normal((32, 1, 6, 6)).astype(np.float32)
    qm = prepare_qat(m, x)
    layers = qm.qat_layers()
    assert layers["a"].act is layers["b"].act and layers["fc"].act is not layers["a"].act
    assert qm.settings["batchnorm_folded"] == 1
    assert layers["a"].act.zero_point.requires_grad  # a signed input learns its zero point
    path = tmp_path / "heads.onnx"
    export_qat(qm, path, x)
    out = tuili.InferenceSession(str(path)).run(None, {"input": x[:4]})[0]
    np.testing.assert_allclose(out, _run_ort(path, x[:4], ort.GraphOptimizationLevel.ORT_DISABLE_ALL), atol=1e-5)


@pytest.mark.slow
def test_finetune_improves_two_bit_digits():
    from tuili import zoo
    from tuili.zoo.training import evaluate

    data = zoo.digits_data()
    model = zoo.create("digits_cnn", seed=0)
    with torch.random.fork_rng(devices=[]):  # a briefly trained float model, then 2-bit weights
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        xt, yt = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        model.train()
        for _ in range(3):
            for i in range(0, len(xt), 64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
                opt.step()
        model.eval()
    qm = prepare_qat(model, data.x_train[:256], weight_bits=2)
    start = evaluate(qm, data.x_test, data.y_test)
    history = finetune_qat(qm, data, epochs=2, progress=False)
    assert history[-1]["loss"] < history[0]["loss"] or history[-1]["train_acc"] > 0.9
    assert evaluate(qm, data.x_test, data.y_test) > start


@pytest.mark.parametrize("kw, match", [
    ({"weight_bits": 1}, "weight_bits=1"), ({"weight_bits": 9}, "weight_bits=9"),
    ({"activation_bits": 6}, "activation_bits=6"), ({"weight_type": "int4", "weight_bits": 8}, "int4"),
    ({"method": "magic"}, "magic"), ({"weight_init": "zeros"}, "zeros"),
])
def test_bad_settings_are_config_errors(digits, kw, match):
    model, data = digits
    with pytest.raises(ConfigError, match=match):
        prepare_qat(model, data.x_train[:16], **kw)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace makes the ScriptModule refused here
def test_bad_models_and_data(digits):
    model, data = digits
    with pytest.raises(ConfigError, match="no Conv or Linear"):
        prepare_qat(nn.Sequential(nn.ReLU(), nn.Flatten()), data.x_train[:4])
    with pytest.raises(ConfigError, match="TorchScript"):
        prepare_qat(torch.jit.trace(model, torch.from_numpy(data.x_train[:2])), data.x_train[:4])
    with pytest.raises(ConfigError, match="nn.Module"):
        prepare_qat("digits.onnx", data.x_train[:4])
    with pytest.raises(InvalidInputError, match="at least one sample"):
        prepare_qat(model, data.x_train[:0])
    with pytest.raises(ConfigError, match="prepare_qat"):
        finetune_qat(model, data)
    qm = prepare_qat(model, data.x_train[:16])
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        finetune_qat(qm, data, progress=False)
    qm.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable weights"):
        finetune_qat(qm, data, progress=False)
    with pytest.raises(ConfigError, match="epochs"):
        finetune_qat(prepare_qat(model, data.x_train[:16]), data, epochs=0, progress=False)


def test_qtype_bits_and_four_bit_ptq(tmp_path):
    assert (qtype("int8", symmetric=True, bits=4).qmin, qtype("int8", symmetric=True, bits=4).qmax) == (-7, 7)
    assert qtype("uint4").qmax == 15 and qtype("int4", symmetric=True).qmin == -7
    assert qtype("int8", symmetric=True, reduce_range=True, bits=4).qmax == 7  # 4 bits need no reduce_range
    with pytest.raises(ConfigError, match="do not fit"):
        qtype("int4", bits=8)
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    out = tmp_path / "w4.onnx"
    report = quantize_static(residual_cnn().SerializeToString(), out, {"x": x}, weight_bits=4)
    assert "4-bit in int8" in report.settings["weights"]
    ints = [v for v in _inits(out).values() if v.dtype == np.int8]
    assert ints and all(v.min() >= -7 and v.max() <= 7 for v in ints)
