"""Search under a latency budget: regularized evolution (Real et al., AAAI 2019) and random search.

Both strategies draw only architectures whose predicted latency is within the budget. Evolution
keeps a population (a queue): each step takes ``sample_size`` random members, mutates the most
accurate one, evaluates the child, appends it and drops the oldest member. In Pareto mode the parent
is a random member of the sample's accuracy-latency Pareto front, so the population spreads along
the front instead of crowding at the budget; the result is the front of everything evaluated.

A search is seeded (same seed and evaluators, same history) and resumable: with a state file, every
step is saved (history, population, random-generator state) and a new run continues where the
last one stopped, giving the same history as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tuili.errors import ConfigError
from tuili.nas.space import Arch, SearchSpace

log = logging.getLogger(__name__)

STRATEGIES = ("evolution", "random")
STATE_VERSION = 1
MAX_DRAWS = 2000  # draws (samples or mutations) to find one architecture within the budget


@dataclasses.dataclass(frozen=True)
class Evaluation:
    arch: Arch
    accuracy: float
    latency: float  # seconds (predicted)

    def to_dict(self) -> dict:
        return {"arch": self.arch.to_dict(), "key": self.arch.key(), "accuracy": self.accuracy, "latency": self.latency}

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        return cls(Arch.from_dict(d["arch"]), float(d["accuracy"]), float(d["latency"]))


def pareto_front(points) -> list[int]:
    """Indices of the (accuracy, latency) points no other point dominates (at least as accurate and at
    least as fast, better in one), sorted by latency; of equal points the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front, best = [], -np.inf
    for i in order:
        if points[i][0] > best:
            front.append(i)
            best = points[i][0]
    return front


def best_so_far(history: list[Evaluation]) -> list[float]:
    """The best accuracy after each evaluation."""
    return list(np.maximum.accumulate([e.accuracy for e in history])) if history else []


class Search:
    """``evaluate(arch) -> accuracy`` and ``latency(arch) -> seconds`` drive a search over ``space``."""

    def __init__(self, space: SearchSpace, evaluate: Callable[[Arch], float], latency: Callable[[Arch], float], *,
                 budget: float | None, strategy: str = "evolution", pareto: bool = False, population: int = 16,
                 sample_size: int = 4, mutate_prob: float = 0.1, seed: int = 0, state_path=None):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown search strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        if budget is not None and not budget > 0:
            raise ConfigError(f"the latency budget must be > 0 seconds, got {budget!r}")
        if budget is None and not pareto:
            raise ConfigError("a latency budget is required unless searching for the Pareto front (pareto=True)")
        if population < 2 or not 1 <= sample_size <= population:
            raise ConfigError(f"evolution needs population >= 2 and 1 <= sample_size <= population, "
                              f"got population={population}, sample_size={sample_size}")
        self.space, self._evaluate, self._latency = space, evaluate, latency
        self.budget, self.strategy, self.pareto = budget, strategy, pareto
        self.population_size, self.sample_size, self.mutate_prob, self.seed = population, sample_size, mutate_prob, seed
        self.state_path = Path(state_path) if state_path else None
        self.rng = np.random.default_rng(seed)
        self.history: list[Evaluation] = []
        self.population: list[int] = []  # indices into history, oldest first
        self._cache: dict[Arch, Evaluation] = {}
        if budget is not None:
            fastest = latency(space.smallest())
            if fastest > budget:
                raise ConfigError(f"latency budget {budget * 1e3:.3f} ms is below the space's fastest network "
                                  f"({space.smallest().key()}, {fastest * 1e3:.3f} ms predicted); raise the budget")
        if self.state_path is not None and self.state_path.exists():
            self._load()

    def config(self) -> dict:
        return {"strategy": self.strategy, "pareto": self.pareto, "budget": self.budget, "population": self.population_size,
                "sample_size": self.sample_size, "mutate_prob": self.mutate_prob, "seed": self.seed,
                "space": self.space.signature()}

    # ----- one step
    def _within(self, arch: Arch) -> bool:
        return self.budget is None or self._latency(arch) <= self.budget

    def _draw(self, make: Callable[[], Arch]) -> Arch:
        for _ in range(MAX_DRAWS):
            arch = make()
            if self._within(arch):
                return arch
        raise ConfigError(f"no architecture within the latency budget {self.budget * 1e3:.3f} ms in {MAX_DRAWS} draws; "
                          "raise the budget")

    def _parent(self) -> Arch:
        picks = self.rng.choice(len(self.population), size=self.sample_size, replace=False)
        sample = [self.history[self.population[int(i)]] for i in picks]
        if self.pareto:
            front = pareto_front([(e.accuracy, e.latency) for e in sample])
            return sample[front[int(self.rng.integers(len(front)))]].arch
        return max(sample, key=lambda e: e.accuracy).arch

    def step(self) -> Evaluation:
        if self.strategy == "random" or len(self.population) < self.population_size:
            arch = self._draw(lambda: self.space.sample(self.rng))
        else:
            parent = self._parent()
            arch = self._draw(lambda: self.space.mutate(parent, self.rng, self.mutate_prob))
        ev = self._cache.get(arch)
        if ev is None:
            ev = Evaluation(arch, float(self._evaluate(arch)), float(self._latency(arch)))
            self._cache[arch] = ev
        self.history.append(ev)
        if self.strategy == "evolution":
            self.population.append(len(self.history) - 1)
            if len(self.population) > self.population_size:
                self.population.pop(0)
        self._save()
        return ev

    def run(self, evaluations: int, progress: bool = False) -> list[Evaluation]:
        """Evaluate until the history holds ``evaluations`` entries (a resumed search continues)."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=evaluations, initial=min(len(self.history), evaluations), desc=f"search ({self.strategy})",
                       unit="arch")
        try:
            while len(self.history) < evaluations:
                ev = self.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best=f"{self.best().accuracy:.3f}", last=f"{ev.accuracy:.3f}")
        finally:
            if bar is not None:
                bar.close()
        return self.history

    # ----- results
    def best(self) -> Evaluation:
        """The most accurate architecture evaluated (all are within the budget); the faster one on ties."""
        if not self.history:
            raise ConfigError("the search has evaluated nothing yet; run it first")
        return max(self.history, key=lambda e: (e.accuracy, -e.latency))

    def front(self) -> list[Evaluation]:
        """The accuracy-latency Pareto front of every distinct architecture evaluated."""
        unique = list({e.arch: e for e in self.history}.values())
        return [unique[i] for i in pareto_front([(e.accuracy, e.latency) for e in unique])]

    # ----- state file
    def _save(self) -> None:
        if self.state_path is None:
            return
        state = {"version": STATE_VERSION, "config": self.config(), "history": [e.to_dict() for e in self.history],
                 "population": self.population, "rng": self.rng.bit_generator.state}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=self.state_path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _load(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
            version, config = state["version"], state["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"search state file {self.state_path} is unreadable ({e}); delete it to start afresh") from None
        if version != STATE_VERSION or config != json.loads(json.dumps(self.config())):
            diff = sorted(k for k in set(config) | set(self.config()) if config.get(k) != json.loads(json.dumps(self.config())).get(k))
            raise ConfigError(f"search state file {self.state_path} belongs to a different search (differs in: "
                              f"{', '.join(diff) or 'version'}); use another state file or the same settings")
        self.history = [Evaluation.from_dict(d) for d in state["history"]]
        self.population = [int(i) for i in state["population"]]
        self.rng.bit_generator.state = state["rng"]
        self._cache = {e.arch: e for e in self.history}
        log.info("resumed search from %s: %d evaluations done", self.state_path, len(self.history))
