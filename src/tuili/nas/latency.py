"""Latency measured on this machine: a lookup table of every block, and a predictor fitted on whole networks.

The table times each block of the space alone, at its input shape, as an ONNX model run by the
chosen engine (tuili's InferenceSession, engine "onnxruntime" or "tuili") at a fixed batch. It is
cached as JSON under ``$TUILI_CACHE_DIR/nas/`` keyed by the CPU (model, cores, ISA features), the
engine and its version, the batch, the thread count and the space, so a second search on the same
machine starts at once and a different machine or engine measures afresh.

A network is not the sum of its blocks: every block timed alone pays the engine's per-call
overhead (feeds checked, outputs returned), which a whole network pays once. The predictor is
``a * sum(LUT) + b * n_blocks + c``, fitted by least squares on whole networks measured end to end.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from tuili.errors import ConfigError
from tuili.nas.space import Arch, SearchSpace, export

log = logging.getLogger(__name__)

ENGINES = ("onnxruntime", "tuili")
VERSION = 1  # bump when what a table entry means changes: old cache files are then ignored


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r} for latency measurement; use one of {', '.join(ENGINES)}")
    return engine


def check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    return int(batch)


def _engine_version(engine: str) -> str:
    import tuili

    if engine == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return f"tuili {tuili.__version__}"


def table_key(space: SearchSpace, engine: str, batch: int, threads: int | None) -> dict:
    """What a table's numbers depend on; two searches share a cached table only if this matches."""
    import torch

    from tuili.runtime import cpu

    return {"version": VERSION, "cpu": cpu.info().describe(), "engine": _engine_version(check_engine(engine)),
            "batch": check_batch(batch), "threads": threads, "torch": torch.__version__, "space": space.signature()}


def time_model(model: bytes, input_shape: tuple[int, ...], engine: str, batch: int, threads: int | None,
               budget: float = 0.05) -> float:
    """Median seconds of one run of ONNX ``model`` on ``engine`` with a random batch."""
    from tuili.bench.timing import time_calls
    from tuili.runtime.session import InferenceSession

    sess = InferenceSession(model, engine=check_engine(engine), threads=threads)
    feeds = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, *input_shape), dtype=np.float32)}
    seconds, _ = time_calls(lambda: sess.run(None, feeds), warmup=10, repeat=2000, min_repeat=20, budget=budget)
    return seconds


def measure_arch(space: SearchSpace, arch: Arch, engine: str, batch: int = 1, threads: int | None = 1,
                 budget: float = 0.3) -> float:
    """End-to-end median seconds of ``arch`` (random weights; latency does not depend on them)."""
    model = export(space.build(arch), input_shape=(space.in_channels, space.resolution, space.resolution), batch=batch)
    return time_model(model, (space.in_channels, space.resolution, space.resolution), engine, batch, threads, budget)


@dataclasses.dataclass
class LatencyTable:
    """Median seconds per block key, for one (CPU, engine, batch, threads, space)."""

    key: dict
    seconds: dict[str, float]
    path: Path | None = None
    loaded: bool = False  # True when read from the cache, False when measured by this process

    def total(self, space: SearchSpace, arch: Arch) -> float:
        """Sum of the blocks of ``arch`` (each timed alone)."""
        try:
            return sum(self.seconds[b.key()] for b in space.blocks(arch))
        except KeyError as e:
            raise ConfigError(f"block {e.args[0]} is not in the latency table {self.path}; the table was measured "
                              "for another space: measure it again for this one") from None

    @classmethod
    def measure(cls, space: SearchSpace, engine: str = "onnxruntime", batch: int = 1, threads: int | None = 1,
                cache_dir=None, progress: bool = False, budget: float = 0.05) -> LatencyTable:
        """The table for this machine: read from the cache, or measured now (every block of the space,
        a few seconds per hundred blocks) and cached."""
        from tuili.data import cache

        key = table_key(space, engine, batch, threads)
        path = cache.cache_dir(cache_dir) / "nas" / f"latency-{key['engine'].split()[0]}-b{key['batch']}-{cache.key(key)}.json"
        if path.exists():
            try:
                d = json.loads(path.read_text())
                if d["key"] == key:
                    log.info("latency table: %s (%d blocks, cached)", path, len(d["seconds"]))
                    return cls(key, d["seconds"], path, loaded=True)
            except (OSError, ValueError, KeyError) as e:
                log.warning("ignoring unreadable latency table %s (%s); measuring again", path, e)
        blocks = space.all_blocks()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(blocks), desc=f"latency table ({engine}, batch {batch})", unit="block")
        seconds = {}
        try:
            for b in blocks:
                shape = (b.cin, b.side, b.side)
                model = export(space.build_block(b), input_shape=shape, batch=batch, output_name="output")
                seconds[b.key()] = time_model(model, shape, engine, batch, threads, budget)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        _write_json(path, {"key": key, "seconds": seconds})
        log.info("latency table: measured %d blocks on %s, saved to %s", len(blocks), key["engine"], path)
        return cls(key, seconds, path)


def _write_json(path: Path, data: dict) -> None:
    """Write atomically (a parallel reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass
class Predictor:
    """latency = per_lut * sum(LUT) + per_block * n_blocks + intercept (seconds)."""

    space: SearchSpace
    table: LatencyTable
    per_lut: float = 1.0
    per_block: float = 0.0
    intercept: float = 0.0

    def features(self, arch: Arch) -> list[float]:
        return [self.table.total(self.space, arch), float(len(self.space.blocks(arch))), 1.0]

    def predict(self, arch: Arch) -> float:
        lut, n, _ = self.features(arch)
        return self.per_lut * lut + self.per_block * n + self.intercept

    @classmethod
    def fit(cls, space: SearchSpace, table: LatencyTable, archs: list[Arch], seconds: list[float]) -> Predictor:
        """Least squares on whole networks measured end to end (at least 3 of them)."""
        if len(archs) != len(seconds) or len(archs) < 3:
            raise ConfigError(f"fitting the latency predictor needs >= 3 measured networks (one time each), "
                              f"got {len(archs)} networks and {len(seconds)} times")
        p = cls(space, table)
        x = np.array([p.features(a) for a in archs])
        y = np.asarray(seconds, dtype=np.float64)
        # relative error is what we report: weight each network by 1/latency, so small ones count alike
        w = 1.0 / y
        coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
        p.per_lut, p.per_block, p.intercept = (float(c) for c in coef)
        return p

    def mape(self, archs: list[Arch], seconds: list[float]) -> float:
        """Mean absolute percentage error (a fraction: 0.05 = 5%) against measured ``seconds``."""
        pred = np.array([self.predict(a) for a in archs])
        y = np.asarray(seconds, dtype=np.float64)
        return float(np.mean(np.abs(pred - y) / y))

    def to_dict(self) -> dict:
        return {"per_lut": self.per_lut, "per_block": self.per_block, "intercept": self.intercept}
