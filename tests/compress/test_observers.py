"""Quantization parameters and observers against hand-computed values and numpy references."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tuili.compress.quant import dequantize, make_observer, qtype, quantize, scale_zero_point
from tuili.compress.quant.observers import Histogram
from tuili.errors import ConfigError

U8, I8 = qtype("uint8"), qtype("int8", symmetric=True)


def test_scale_zero_point_by_hand():
    s, z = scale_zero_point(-1.0, 3.0, U8)
    assert s == pytest.approx(4 / 255) and z == 64 and z.dtype == np.uint8  # round(0 + 1 / (4/255)) = round(63.75)
    s, z = scale_zero_point(-2.0, 1.0, I8, symmetric=True)
    assert s == pytest.approx(2 / 127) and z == 0 and z.dtype == np.int8
    s, z = scale_zero_point(0.5, 2.0, U8)  # widened to contain 0: ReLU's floor stays exact
    assert s == pytest.approx(2 / 255) and z == 0
    s, z = scale_zero_point(0.0, 0.0, U8)
    assert s == 1.0 and z == 0
    assert qtype("int8", symmetric=True, reduce_range=True).qmax == 64  # 2 * 255 * 64 fits int16


def test_quantize_matches_onnx_reference_per_axis():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    scale = np.array([0.01, 0.02, 0.05, 0.1], np.float32)
    zp = np.array([0, 3, -2, 7], np.int8)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=1)
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", 1, None)],
                              [helper.make_tensor_value_info("y", 3, None)],
                              [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")])
    ref = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize(x, scale, zp, axis=1), ref)
    back = dequantize(ref, scale, zp, axis=1)
    assert np.all(np.abs(back - x) <= scale[None, :, None] / 2 + 1e-7)


def test_minmax_is_exact_per_tensor_and_per_channel():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((5, 3, 4)).astype(np.float32) * (i + 1) for i in range(4)]
    whole = np.concatenate(batches)
    per_tensor, per_channel = make_observer("minmax"), make_observer("minmax", axis=1)
    for b in batches:
        per_tensor.update(b)
        per_channel.update(b)
    lo, hi = per_tensor.range(U8)
    assert lo == whole.min() and hi == whole.max()
    lo, hi = per_channel.range(U8)
    np.testing.assert_array_equal(lo, whole.min(axis=(0, 2)))
    np.testing.assert_array_equal(hi, whole.max(axis=(0, 2)))


def test_histogram_grows_without_losing_counts():
    rng = np.random.default_rng(2)
    h = Histogram(bins=64)
    data = [rng.standard_normal(1000) * s for s in (0.1, 1.0, 7.0, 500.0)]  # A grows by 2^k, then beyond `bins`
    for d in data:
        h.add(d)
    allx = np.concatenate(data)
    assert h.counts.sum() == allx.size
    assert h.amax >= np.abs(allx).max()
    # the first three batches span less than one final bin: they sit in the two bins next to 0
    late = data[-1]
    direct = np.bincount(np.clip(((late + h.amax) * (128 / (2 * h.amax))).astype(int), 0, 127), minlength=128)
    direct[63] += sum(int((d < 0).sum()) for d in data[:3])
    direct[64] += sum(int((d >= 0).sum()) for d in data[:3])
    assert np.abs(direct - h.counts).sum() <= 4  # rounding at bin edges only


def test_histogram_merges_bins_exactly_on_growth():
    rng = np.random.default_rng(6)
    a, b = rng.uniform(-1, 1, 5000), rng.uniform(-3, 3, 5000)
    h = Histogram(bins=64)
    h.add(a)
    h.add(b)  # A grows from ~1 to ~4: 4 old bins per new bin
    direct = np.bincount(np.clip(((np.concatenate([a, b]) + h.amax) * (128 / (2 * h.amax))).astype(int), 0, 127),
                         minlength=128)
    assert np.abs(direct - h.counts).sum() <= 4


def test_percentile_on_uniform():
    x = np.random.default_rng(3).uniform(0, 1, 200_000).astype(np.float32)
    obs = make_observer("percentile", percentile=99.0)
    for chunk in np.split(x, 10):
        obs.update(chunk)
    lo, hi = obs.range(U8)
    assert lo == 0 or lo == x.min()
    assert hi == pytest.approx(0.99, abs=2e-3)


def _bulk_with_outliers(n_outliers: int) -> np.ndarray:
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, 200_000).astype(np.float32)
    x[:n_outliers] = 100.0
    return x


def test_entropy_clips_outliers_and_keeps_a_uniform_range():
    obs = make_observer("entropy")
    obs.update(_bulk_with_outliers(10))
    lo, hi = obs.range(U8)
    # the 10 outliers at 100 are clipped; TensorRT's search starts at 128 of the 2048 bins (t = 6.25)
    assert -1.01 < lo < -0.99 and 0.99 < hi <= 100 * 128 / 2048
    obs = make_observer("entropy")
    obs.update(_bulk_with_outliers(0))
    lo, hi = obs.range(U8)
    assert lo < -0.95 and hi > 0.95  # nothing to clip in a uniform distribution


def _quant_mse(x: np.ndarray, lo, hi) -> float:
    s, z = scale_zero_point(lo, hi, U8)
    return float(np.mean((dequantize(quantize(x, s, z), s, z) - x) ** 2))


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_clipping_observers_resolve_the_bulk_better_than_minmax(method):
    # (MSE rightly keeps this outlier: clipping 100 to t costs (100 - t)^2, more than the bulk's
    # rounding noise gains over 200 000 samples; its own test compares it with the true optimum)
    x = _bulk_with_outliers(1)  # one value in 200 000: beyond the 99.999th percentile
    obs, mm = make_observer(method), make_observer("minmax")
    obs.update(x)
    mm.update(x)
    bulk = x[1:]
    assert _quant_mse(bulk, *obs.range(U8)) < 0.1 * _quant_mse(bulk, *mm.range(U8))


def test_mse_on_a_gaussian_finds_the_known_8bit_clipping():
    # the MSE-optimal symmetric 8-bit clipping of N(0, 1) is about 3.9 sigma (Banner et al., ACIQ)
    x = np.random.default_rng(5).standard_normal(1_000_000).astype(np.float32)
    obs = make_observer("mse")
    obs.update(x)
    lo, hi = obs.range(I8, symmetric=True)
    assert hi == pytest.approx(3.92, abs=0.1) and lo == -hi


def test_mse_threshold_is_near_the_true_optimum():
    x = _bulk_with_outliers(1)
    obs = make_observer("mse")
    obs.update(x)
    lo, hi = obs.range(U8)
    best = min(_quant_mse(x, -t, t) for t in np.linspace(1, 100, 400))
    assert _quant_mse(x, lo, hi) <= 1.1 * best


def test_bad_observer_options_are_errors():
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'"):
        make_observer("kl")
    with pytest.raises(ConfigError, match="does not take"):
        make_observer("minmax", percentile=99)
    with pytest.raises(ConfigError, match="saw no data"):
        make_observer("entropy").range(U8)
