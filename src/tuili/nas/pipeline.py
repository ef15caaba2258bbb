"""The whole search as one call: latency table -> predictor -> supernet -> search -> fine-tuned winner.

    result = run_nas(NasConfig(budget_ms=0.3, engine="onnxruntime", output="best.onnx"))

Every stage that takes long keeps its result in ``out_dir`` (supernet weights, predictor
measurements, search state) and a rerun with the same settings picks them up; the latency table
lives in the shared cache (:mod:`tuili.nas.latency`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from tuili.errors import ConfigError
from tuili.nas.latency import ENGINES, LatencyTable, Predictor, check_batch, check_engine, measure_arch
from tuili.nas.search import STRATEGIES, Evaluation, Search
from tuili.nas.space import Arch, SearchSpace, export

log = logging.getLogger(__name__)


@dataclasses.dataclass
class NasConfig:
    budget_ms: float | None  # None: Pareto mode without a cap
    output: Path = Path("best.onnx")
    engine: str = "onnxruntime"
    batch: int = 1
    threads: int | None = 1
    out_dir: Path | None = None  # default: <output stem>_nas/ next to the output
    strategy: str = "evolution"
    pareto: bool = False
    evaluations: int = 150
    population: int = 24
    sample_size: int = 6
    seed: int = 0
    shrink_epochs: float = 1.0  # per progressive-shrinking phase
    first_epochs: float = 2.0  # the largest network, before shrinking
    finetune_epochs: float = 3.0
    fit_archs: int = 20  # networks measured end to end to fit the predictor
    check_archs: int = 50  # other networks measured to report its error
    train_subset: int | None = None  # first N training images (quick runs)
    val_subset: int | None = None
    calib_images: int = 1024  # training images that recalibrate BatchNorm of each sub-network
    cache_dir: Path | None = None
    progress: bool = True

    @classmethod
    def quick(cls, **kw) -> NasConfig:
        """Minutes, not tens of minutes: a glyphs subset, short training, few evaluations."""
        base = dict(evaluations=16, population=8, sample_size=3, shrink_epochs=0.5, first_epochs=1.0,
                    finetune_epochs=1.0, fit_archs=8, check_archs=8, train_subset=4096, val_subset=1000, calib_images=512)
        return cls(**{**base, **kw})

    def check(self) -> None:
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"--budget-ms must be > 0, got {self.budget_ms}")
        if self.budget_ms is None and not self.pareto:
            raise ConfigError("give a latency budget (--budget-ms) or ask for the Pareto front (--pareto)")
        check_engine(self.engine)
        check_batch(self.batch)
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        for name in ("evaluations", "fit_archs"):
            if getattr(self, name) < (3 if name == "fit_archs" else 1):
                raise ConfigError(f"{name} is too small: {getattr(self, name)}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path(self.output).with_name(Path(self.output).stem + "_nas")


@dataclasses.dataclass
class NasResult:
    winner: Evaluation
    test_accuracy: float
    measured_ms: float
    output: Path
    report: Path
    plot: Path
    summary: dict


def _measured_archs(space: SearchSpace, cfg: NasConfig, table: LatencyTable, n: int, seed: int, path: Path) -> tuple[list, list]:
    """``n`` random architectures and their end-to-end seconds; kept in ``path`` for reruns."""
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n)]
    if path.exists():
        d = json.loads(path.read_text())
        if d.get("table") == table.key and [Arch.from_dict(a) for a in d["archs"]] == archs:
            return archs, d["seconds"]
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(archs, desc=f"end-to-end latency ({path.stem})", unit="net")
    seconds = [measure_arch(space, a, cfg.engine, cfg.batch, cfg.threads) for a in (bar if bar is not None else archs)]
    path.write_text(json.dumps({"table": table.key, "archs": [a.to_dict() for a in archs], "seconds": seconds}))
    return archs, seconds


def latency_model(space: SearchSpace, cfg: NasConfig) -> tuple[Predictor, dict]:
    """The table (cached) and the predictor fitted on ``fit_archs`` networks, with its error on ``check_archs`` others."""
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    table = LatencyTable.measure(space, cfg.engine, cfg.batch, cfg.threads, cache_dir=cfg.cache_dir, progress=cfg.progress)
    fa, fs = _measured_archs(space, cfg, table, cfg.fit_archs, cfg.seed + 1000, run / "latency_fit.json")
    predictor = Predictor.fit(space, table, fa, fs)
    info = {"table": str(table.path), "blocks": len(table.seconds), "table_cached": table.loaded, **predictor.to_dict(),
            "fit_archs": len(fa), "fit_mape": predictor.mape(fa, fs)}
    if cfg.check_archs:
        ca, cs = _measured_archs(space, cfg, table, cfg.check_archs, cfg.seed + 2000, run / "latency_check.json")
        info.update(check_archs=len(ca), mape=predictor.mape(ca, cs),
                    lut_sum_mape=float(np.mean([abs(table.total(space, a) - s) / s for a, s in zip(ca, cs)])))
    log.info("latency predictor: %s", info)
    return predictor, info


def glyph_splits(cfg: NasConfig):
    from tuili.zoo.training import glyphs_data

    d = glyphs_data("glyphs_cnn")
    n, v = cfg.train_subset, cfg.val_subset
    return d.x_train[:n], d.y_train[:n], d.x_val[:v], d.y_val[:v], d.x_test, d.y_test


def trained_supernet(space: SearchSpace, cfg: NasConfig, x, y):
    """The supernet trained by progressive shrinking, or the one a previous run with the same settings saved."""
    import torch

    from tuili.nas.supernet import Supernet, shrinking_schedule, train_supernet

    phases = shrinking_schedule(cfg.shrink_epochs, first=cfg.first_epochs)
    key = {"space": space.signature(), "seed": cfg.seed, "phases": [dataclasses.asdict(p) for p in phases], "train": len(x)}
    path = cfg.run_dir / "supernet.pt"
    sn = Supernet(space, seed=cfg.seed)
    if path.exists():
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck.get("key") == json.dumps(key, sort_keys=True):
            sn.net.load_state_dict(ck["state_dict"])
            log.info("supernet: loaded %s", path)
            return sn, ck.get("history", [])
    history = train_supernet(sn, x, y, phases, seed=cfg.seed, progress=cfg.progress, threads=cfg.threads)
    torch.save({"key": json.dumps(key, sort_keys=True), "state_dict": sn.net.state_dict(), "history": history}, path)
    return sn, history


def run_nas(cfg: NasConfig) -> NasResult:
    """Search, fine-tune the winner, export it to ``cfg.output``, write the report and the Pareto plot."""
    from tuili.nas.report import pareto_plot, write_report
    from tuili.nas.supernet import fit, inherited_accuracy
    from tuili.runtime import cpu
    from tuili.zoo.training import evaluate

    cfg.check()
    space = SearchSpace()
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    predictor, lat_info = latency_model(space, cfg)
    times["latency model"] = time.perf_counter() - t

    t = time.perf_counter()
    xtr, ytr, xval, yval, xte, yte = glyph_splits(cfg)
    sn, sn_history = trained_supernet(space, cfg, xtr, ytr)
    times["supernet"] = time.perf_counter() - t

    t = time.perf_counter()
    calib = xtr[:cfg.calib_images]
    budget = cfg.budget_ms / 1e3 if cfg.budget_ms is not None else None
    search = Search(space, lambda a: inherited_accuracy(sn, a, calib, xval, yval), predictor.predict, budget=budget,
                    strategy=cfg.strategy, pareto=cfg.pareto, population=cfg.population, sample_size=cfg.sample_size,
                    seed=cfg.seed, state_path=run / "search_state.json")
    search.run(cfg.evaluations, progress=cfg.progress)
    winner = search.best()
    times["search"] = time.perf_counter() - t

    t = time.perf_counter()
    net = sn.extract(winner.arch)
    fit(net, xtr, ytr, epochs=cfg.finetune_epochs, lr=1e-3, seed=cfg.seed, progress=cfg.progress,
        desc=f"fine-tune {winner.arch.key()}", threads=cfg.threads)
    test_acc = evaluate(net, xte, yte)
    shape = (space.in_channels, space.resolution, space.resolution)
    out = export(net, cfg.output, input_shape=shape, batch=cfg.batch,
                 doc=f"tuili nas: {winner.arch.key()} (glyphs, {cfg.engine}, batch {cfg.batch})")
    from tuili.nas.latency import time_model

    measured = time_model(Path(out).read_bytes(), shape, cfg.engine, cfg.batch, cfg.threads, budget=0.5)
    times["fine-tune + export"] = time.perf_counter() - t

    summary = {
        "cpu": cpu.info().describe(), "engine": cfg.engine, "batch": cfg.batch, "threads": cfg.threads,
        "budget_ms": cfg.budget_ms, "strategy": cfg.strategy, "pareto": cfg.pareto, "evaluations": len(search.history),
        "latency": lat_info, "supernet": sn_history,
        "winner": {**winner.to_dict(), "predicted_ms": winner.latency * 1e3, "measured_ms": measured * 1e3,
                   "test_accuracy": test_acc, "params": sum(p.numel() for p in net.parameters())},
        "front": [e.to_dict() for e in search.front()], "seconds": times, "output": str(out),
    }
    plot = pareto_plot(search.history, search.front(), winner, cfg.budget_ms, run / "pareto.png",
                       title=f"tuili nas on glyphs: {cfg.engine}, batch {cfg.batch}")
    report = write_report(summary, run / "report.md")
    (run / "report.json").write_text(json.dumps(summary, indent=1))
    log.info("winner %s: test accuracy %.2f%%, %.3f ms measured (%.3f predicted) -> %s", winner.arch.key(), 100 * test_acc,
             measured * 1e3, winner.latency * 1e3, out)
    return NasResult(winner, test_acc, measured * 1e3, Path(out), report, plot, summary)


__all__ = ["ENGINES", "NasConfig", "NasResult", "run_nas", "latency_model", "trained_supernet", "glyph_splits"]
