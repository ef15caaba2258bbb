"""int4 weight-only quantization: block codes and packing against numpy, the two formats in
onnxruntime (and the DequantizeLinear one in tuili's engine) against the numpy dequantized matmul,
GPTQ against round-to-nearest, and bad input."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import tuili
from tuili.compress.quant import quantize_int4
from tuili.compress.quant.blocks import pack_int4, quantize_blocks, unpack_int4
from tuili.compress.quant.gptq import HessianObserver, gptq_blocks
from tuili.errors import ConfigError

from ._models import matmuls, save


def _ort(path, optimize=True):
    so = ort.SessionOptions()
    if not optimize:  # onnxruntime fuses DQ(int4) -> MatMul into MatMulNBits computing with int8 activations
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _reference(model: onnx.ModelProto, x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The float model's computation in numpy with the given (dequantized) weights."""
    b2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b2"))
    h = np.maximum(x @ w["w1"], 0)
    h = np.maximum(h @ w["w2"] + b2, 0)
    return h @ w["w3"]


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_pack_unpack_exact(n):
    codes = np.random.default_rng(n).integers(0, 16, (3, 5, n)).astype(np.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (3, 5, (n + 1) // 2) and packed.dtype == np.uint8
    assert np.array_equal(unpack_int4(packed, n), codes)
    assert packed[0, 0, 0] & 0x0F == codes[0, 0, 0]  # first code in the low nibble
    # the same layout as onnx's own int4 serialization
    signed = (codes[0].astype(np.int8) - 8).astype(ml_dtypes.int4)
    raw = numpy_helper.from_array(signed, "t").raw_data
    assert np.array_equal(np.frombuffer(raw, np.uint8), pack_int4((codes[0].astype(np.int16) - 8 & 0x0F).astype(np.uint8).reshape(-1)))


@pytest.mark.parametrize("symmetric", [True, False])
def test_block_scales_match_numpy(symmetric):
    w = np.random.default_rng(0).standard_normal((80, 6)).astype(np.float32)  # K = 80: 3 blocks of 32, last partial
    bw = quantize_blocks(w, 32, symmetric)
    wp = np.concatenate([w, np.zeros((16, 6), np.float32)]).reshape(3, 32, 6)
    if symmetric:
        np.testing.assert_allclose(bw.scale, np.abs(wp).max(1) / 7, rtol=1e-6)
        assert bw.zero_point is None
    else:
        lo, hi = np.minimum(wp.min(1), 0), np.maximum(wp.max(1), 0)
        np.testing.assert_allclose(bw.scale, (hi - lo) / 15, rtol=1e-6)
        np.testing.assert_array_equal(bw.zero_point, np.clip(np.rint(-lo / ((hi - lo) / 15)), 0, 15))
    assert bw.codes.shape == (96, 6) and np.all(bw.codes[80:] == bw.zero_points()[2])  # padding is exact zeros
    deq = bw.dequantize()
    assert deq.shape == w.shape
    assert np.all(np.abs(deq - w) <= np.repeat(bw.scale, 32, axis=0)[:80] / 2 + 1e-6)


@pytest.mark.parametrize("fmt, symmetric", [("dq", True), ("dq", False), ("nbits", True), ("nbits", False)])
def test_int4_formats_agree_with_numpy(tmp_path, fmt, symmetric):
    model = matmuls()
    src = save(model, tmp_path / "m.onnx")
    out = tmp_path / f"m.{fmt}.onnx"
    report = quantize_int4(src, out, block_size=32, symmetric=symmetric, fmt=fmt)
    assert report.quantized["MatMul"] == 2 and report.quantized["Gemm"] == 1
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    deq = {"w1": quantize_blocks(w["w1"], 32, symmetric).dequantize(),
           "w2": quantize_blocks(np.ascontiguousarray(w["w2"].T), 32, symmetric).dequantize(),
           "w3": quantize_blocks(w["w3"], 32, symmetric).dequantize()}
    x = np.random.default_rng(1).standard_normal((5, 80)).astype(np.float32)
    ref = _reference(model, x, deq)
    m = onnx.load(out)
    if fmt == "dq":
        types = {t.name: t.data_type for t in m.graph.initializer}
        assert (onnx.TensorProto.INT4 if symmetric else onnx.TensorProto.UINT4) in types.values()
        assert {o.domain: o.version for o in m.opset_import}[""] >= 21
        np.testing.assert_allclose(_ort(out, optimize=False).run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(tuili.InferenceSession(str(out)).run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
    else:
        assert sum(n.op_type == "MatMulNBits" for n in m.graph.node) == 3
        np.testing.assert_allclose(_ort(out).run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
    # 80 x 80 + 24 x 80 + 24 x 8 float32 weights -> 4 bits + a float32 scale (+ 4-bit zero point) per 32
    assert report.weight_bytes_before == 4 * (80 * 80 + 24 * 80 + 24 * 8)
    assert 5.5 < report.weight_bytes_before / report.weight_bytes_after < 6.5


def test_matmulnbits_output_runs_in_tuili_like_onnxruntime(tmp_path):
    src = save(matmuls(), tmp_path / "m.onnx")
    quantize_int4(src, tmp_path / "n.onnx", block_size=32, fmt="nbits")
    x = np.random.default_rng(3).standard_normal((2, 80)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(tmp_path / "n.onnx"), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = tuili.InferenceSession(str(tmp_path / "n.onnx")).run(None, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_gptq_beats_round_to_nearest_on_the_layer_output():
    rng = np.random.default_rng(0)
    k, n = 64, 32
    x = rng.standard_normal((512, k)) @ rng.standard_normal((k, k)) * 0.3  # correlated inputs
    x = x.astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    obs = HessianObserver()
    obs.update(x[:256])
    obs.update(x[256:])
    np.testing.assert_allclose(obs.hessian(), x.T.astype(np.float64) @ x / 512, rtol=1e-4)

    def err(bw):
        return float(np.linalg.norm(x @ w - x @ bw.dequantize()))
    for symmetric in (True, False):
        rtn, gptq = quantize_blocks(w, 32, symmetric), gptq_blocks(w, obs.hessian(), 32, symmetric)
        assert gptq.codes.shape == rtn.codes.shape and gptq.codes.max() <= 15
        assert err(gptq) < 0.8 * err(rtn)


def test_gptq_end_to_end_improves_snr(tmp_path):
    src = save(matmuls(), tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((80, 80)).astype(np.float32) * 0.3
    calib = {"x": rng.standard_normal((128, 80)).astype(np.float32) @ mix}
    x = rng.standard_normal((64, 80)).astype(np.float32) @ mix
    ref = _ort(src).run(None, {"x": x})[0]
    snr = {}
    for method in ("rtn", "gptq"):
        out = tmp_path / f"{method}.onnx"
        quantize_int4(src, out, block_size=32, method=method, calib=calib if method == "gptq" else None)
        y = _ort(out, optimize=False).run(None, {"x": x})[0]
        snr[method] = 10 * np.log10((ref ** 2).sum() / ((ref - y) ** 2).sum())
    assert snr["gptq"] > snr["rtn"] + 1.0


@pytest.mark.parametrize("kw, match", [
    ({"block_size": 24}, "power of two >= 16"),
    ({"block_size": 8}, "power of two >= 16"),
    ({"fmt": "qoperator"}, "int4 format"),
    ({"method": "gptq"}, "needs calibration data"),
    ({"method": "awq"}, "rounding method"),
    ({"accuracy_level": 4}, "accuracy_level is a MatMulNBits attribute"),
])
def test_bad_int4_options(tmp_path, kw, match):
    src = save(matmuls(), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=match):
        quantize_int4(src, tmp_path / "q.onnx", **kw)
    assert not (tmp_path / "q.onnx").exists()


def test_cli_int4(tmp_path, capsys):
    from tuili.cli import main

    src = save(matmuls(), tmp_path / "m.onnx")
    out = tmp_path / "m.int4.onnx"
    assert main(["quantize", src, "-o", str(out), "--mode", "int4", "--block-size", "32", "--zero-points"]) == 0
    text = capsys.readouterr().out
    assert "int4 quantization" in text and "quantized weights:" in text and "uint4 with zero points" in text
    assert onnx.load(out).opset_import
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((16, 80)).astype(np.float32))
    assert main(["quantize", src, "-o", str(tmp_path / "g.onnx"), "--mode", "int4", "--int4-method", "gptq",
                 "--calib", str(tmp_path / "c.npz"), "--format", "nbits"]) == 0
    capsys.readouterr()
    assert main(["quantize", src, "-o", str(tmp_path / "x.onnx"), "--block-size", "32", "--random", "4"]) == 2
    assert "--block-size are for --mode int4" in capsys.readouterr().err
    assert main(["quantize", src, "-o", str(tmp_path / "x.onnx"), "--mode", "int4", "--calib", str(tmp_path / "c.npz")]) == 2
    assert "round-to-nearest int4 takes no calibration data" in capsys.readouterr().err
