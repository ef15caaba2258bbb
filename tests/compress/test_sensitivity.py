"""Sensitivity and mixed precision: the planted sensitive layer is found and kept float, the greedy
loop stops as soon as the budget is met, a user metric drives it, and bad input is refused."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tuili.compress.quant import load_metric, quantize_mixed
from tuili.errors import ConfigError

from ._models import matmuls, save

RNG = np.random.default_rng(0)
CALIB = {"x": RNG.standard_normal((64, 80)).astype(np.float32)}
EVAL = {"x": RNG.standard_normal((32, 80)).astype(np.float32)}


@pytest.fixture
def planted(tmp_path):
    return save(matmuls(outlier=40.0), tmp_path / "planted.onnx")


def _run(src, tmp_path, budget, **kw):
    return quantize_mixed(src, tmp_path / "mixed.onnx", CALIB, budget, eval_data=EVAL, measure_latency=False, **kw)


def test_sensitivity_finds_the_planted_layer(planted, tmp_path):
    r = _run(planted, tmp_path, budget=0.0)  # SNR >= 0 dB: met at once, nothing kept float
    by_name = {la.name: la for la in r.layers}
    assert set(by_name) == {"mm1", "fc2", "mm3"}
    assert min(r.layers, key=lambda la: la.score).name == "fc2"
    assert by_name["fc2"].score < min(by_name["mm1"].score, by_name["mm3"].score) - 10
    assert r.met and not any(la.kept_float for la in r.layers)


def test_budget_loop_keeps_the_sensitive_layer_float_and_stops(planted, tmp_path):
    scores = {la.name: la.score for la in _run(planted, tmp_path, budget=0.0).layers}
    budget = scores["fc2"] + 3.0  # all int8 misses it (the model is no better than fc2 alone); fc2 float meets it
    r = _run(planted, tmp_path, budget=budget)
    assert r.met and r.score >= budget
    assert [la.name for la in r.layers if la.kept_float] == ["fc2"]
    assert {f.name: f.reason for f in r.report.float_nodes}["fc2"].startswith("sensitivity")
    m = onnx.load(tmp_path / "mixed.onnx")
    quantized_weights = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert "w2_quantized" not in quantized_weights and {"w1_quantized", "w3_quantized"} <= quantized_weights
    # an impossible budget (the metric must rise by a point): every layer ends float, and the result says so
    r = _run(planted, tmp_path, budget=-1.0, metric=lambda outputs: 1.0)
    assert not r.met and all(la.kept_float for la in r.layers)
    assert "NOT met" in r.summary()


def test_metric_callback_and_points_budget(planted, tmp_path):
    seen = []

    def top1(outputs):  # the user's metric: % of rows whose argmax is class 0..3 (any score, higher is better)
        seen.append({k: v.shape for k, v in outputs.items()})
        return 100.0 * float((outputs["y"].argmax(1) < 4).mean())

    r = _run(planted, tmp_path, budget=0.5, metric=top1)
    assert seen[0] == {"y": (32, 8)} and r.metric
    assert r.met and r.baseline - r.score <= 0.5
    assert r.report.settings["budget"] == "drop <= 0.5"


def test_latency_is_measured_per_layer(planted, tmp_path):
    r = quantize_mixed(planted, tmp_path / "m.onnx", CALIB, 0.0, eval_data=EVAL, repeat=6, budget_s=0.01)
    assert all(la.float_ms > 0 and la.int8_ms > 0 for la in r.layers)
    assert set(r.latency_ms) == {"fp32", "int8 (all layers)", "mixed"}
    assert "latency at batch 1 in onnxruntime" in r.summary()


def test_load_metric(tmp_path):
    f = tmp_path / "mymetric.py"
    f.write_text("def top1(outputs):\n    return 1.0\n")
    assert load_metric(f"{f}:top1")({}) == 1.0
    with pytest.raises(ConfigError, match="module:function"):
        load_metric("nocolon")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_metric(f"{f}:nope")
    with pytest.raises(ConfigError, match="cannot import"):
        load_metric("tuili_no_such_module_here:fn")


def test_cli_accuracy_budget(planted, tmp_path, capsys):
    from tuili.cli import main

    np.savez(tmp_path / "c.npz", **CALIB)
    np.savez(tmp_path / "e.npz", **EVAL)
    (tmp_path / "score.py").write_text("def neg_l1(outputs):\n    return -float(abs(outputs['y']).mean())\n")
    out = tmp_path / "m.onnx"
    assert main(["quantize", planted, "-o", str(out), "--calib", str(tmp_path / "c.npz"), "--eval", str(tmp_path / "e.npz"),
                 "--accuracy-budget", "100", "--metric", f"{tmp_path / 'score.py'}:neg_l1"]) == 0
    text = capsys.readouterr().out
    assert "| layer | op |" in text and "mixed quantization" in text and "budget met" in text
    assert main(["quantize", planted, "-o", str(out), "--calib", str(tmp_path / "c.npz"), "--metric", "a:b"]) == 2
    assert "with --accuracy-budget N" in capsys.readouterr().err
