"""The latency table (measured, cached, keyed by CPU/engine/batch) and the predictor's fit."""
from __future__ import annotations

import numpy as np
import pytest

from tuili.errors import ConfigError
from tuili.nas.latency import LatencyTable, Predictor, table_key


def test_table_is_measured_once_then_read_from_the_cache(micro_space, tmp_path):
    t1 = LatencyTable.measure(micro_space, "onnxruntime", 1, cache_dir=tmp_path, budget=0.005)
    assert not t1.loaded and t1.path.exists()
    assert set(t1.seconds) == {b.key() for b in micro_space.all_blocks()}
    assert all(s > 0 for s in t1.seconds.values())
    mtime = t1.path.stat().st_mtime_ns
    t2 = LatencyTable.measure(micro_space, "onnxruntime", 1, cache_dir=tmp_path, budget=0.005)
    assert t2.loaded and t2.seconds == t1.seconds and t2.path.stat().st_mtime_ns == mtime


def test_each_engine_and_batch_gets_its_own_table(micro_space, tmp_path):
    paths = {LatencyTable.measure(micro_space, engine, batch, cache_dir=tmp_path, budget=0.002).path
             for engine, batch in (("onnxruntime", 1), ("onnxruntime", 2), ("tuili", 1))}
    assert len(paths) == 3


def test_key_names_cpu_engine_batch_and_space(tiny_space):
    from tuili.runtime import cpu

    k = table_key(tiny_space, "tuili", 4, 1)
    assert k["cpu"] == cpu.info().describe() and k["engine"].startswith("tuili") and k["batch"] == 4
    assert k["space"] == tiny_space.signature()
    assert table_key(tiny_space, "onnxruntime", 4, 1)["engine"].startswith("onnxruntime")


def test_a_corrupt_cache_file_is_measured_again(micro_space, tmp_path):
    t1 = LatencyTable.measure(micro_space, "onnxruntime", 1, cache_dir=tmp_path, budget=0.002)
    t1.path.write_text("{not json")
    t2 = LatencyTable.measure(micro_space, "onnxruntime", 1, cache_dir=tmp_path, budget=0.002)
    assert not t2.loaded and set(t2.seconds) == set(t1.seconds)


@pytest.mark.parametrize("engine,batch", [("tensorrt", 1), ("onnxruntime", 0), ("tuili", -2)])
def test_bad_engine_or_batch_is_a_config_error(micro_space, tmp_path, engine, batch):
    with pytest.raises(ConfigError, match="engine|batch"):
        LatencyTable.measure(micro_space, engine, batch, cache_dir=tmp_path)


def test_predictor_recovers_a_known_overhead(tiny_space):
    """Synthetic end-to-end times built from the table with a known scale, per-block saving and intercept."""
    rng = np.random.default_rng(0)
    table = LatencyTable({}, {b.key(): float(rng.uniform(1e-5, 1e-4)) for b in tiny_space.all_blocks()})
    archs = [tiny_space.sample(rng) for _ in range(12)]
    true = [0.9 * table.total(tiny_space, a) - 4e-6 * len(tiny_space.blocks(a)) + 2e-5 for a in archs]
    p = Predictor.fit(tiny_space, table, archs[:8], true[:8])
    assert p.per_lut == pytest.approx(0.9, rel=1e-6) and p.per_block == pytest.approx(-4e-6, rel=1e-4)
    assert p.intercept == pytest.approx(2e-5, rel=1e-4)
    assert p.mape(archs[8:], true[8:]) < 1e-6
    noisy = [t * (1 + 0.2 * (i % 2)) for i, t in enumerate(true)]
    assert p.mape(archs, noisy) > 0.05


def test_predictor_needs_enough_measurements(tiny_space):
    table = LatencyTable({}, {b.key(): 1e-5 for b in tiny_space.all_blocks()})
    with pytest.raises(ConfigError, match=">= 3"):
        Predictor.fit(tiny_space, table, [tiny_space.smallest()], [1e-4])


def test_predictor_on_measured_networks_is_positive(micro_space, tmp_path):
    from tuili.nas.latency import measure_arch

    table = LatencyTable.measure(micro_space, "onnxruntime", 1, cache_dir=tmp_path, budget=0.002)
    rng = np.random.default_rng(3)
    archs = [micro_space.sample(rng) for _ in range(4)]
    seconds = [measure_arch(micro_space, a, "onnxruntime", budget=0.01) for a in archs]
    p = Predictor.fit(micro_space, table, archs, seconds)
    assert all(p.predict(a) > 0 for a in archs)
