"""Evolution and random search: the budget holds, seeds repeat, a resumed search equals an uninterrupted
one, Pareto fronts are right, bad settings are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuili.errors import ConfigError
from tuili.nas.search import Search, best_so_far, pareto_front
from tuili.nas.space import SearchSpace

SPACE = SearchSpace()


def latency(arch) -> float:
    """A synthetic but monotone latency: more depth, expansion, kernel and width cost more (seconds)."""
    return 1e-5 * (sum(s.depth * (s.expansion + s.kernel + 2 * s.se) for s in arch.stages) * arch.width)


def accuracy(arch) -> float:
    """A synthetic accuracy with a structure evolution can climb: rewards kernel 5, SE and depth."""
    return sum((s.kernel == 5) + 0.5 * s.se + 0.2 * s.depth for s in arch.stages) / 16 + 0.1 * arch.width


def search(**kw) -> Search:
    base = dict(budget=1.5e-3, strategy="evolution", population=8, sample_size=3, seed=0)
    return Search(SPACE, accuracy, latency, **{**base, **kw})


@pytest.mark.parametrize("strategy", ["evolution", "random"])
def test_same_seed_same_history_and_all_within_budget(strategy):
    a = search(strategy=strategy).run(40)
    b = search(strategy=strategy).run(40)
    assert [e.arch for e in a] == [e.arch for e in b]
    assert all(e.latency <= 1.5e-3 for e in a)
    c = search(strategy=strategy, seed=1).run(40)
    assert [e.arch for e in a] != [e.arch for e in c]


@pytest.mark.parametrize("strategy,pareto", [("evolution", False), ("random", False), ("evolution", True)])
def test_resumed_search_equals_an_uninterrupted_one(tmp_path, strategy, pareto):
    state = tmp_path / "state.json"
    straight = search(strategy=strategy, pareto=pareto).run(30)
    search(strategy=strategy, pareto=pareto, state_path=state).run(12)
    resumed = search(strategy=strategy, pareto=pareto, state_path=state)
    assert len(resumed.history) == 12
    assert [e.arch for e in resumed.run(30)] == [e.arch for e in straight]
    assert len(json.loads(state.read_text())["history"]) == 30


def test_state_of_another_search_is_refused(tmp_path):
    state = tmp_path / "state.json"
    search(state_path=state).run(3)
    with pytest.raises(ConfigError, match="different search.*seed"):
        search(state_path=state, seed=7)
    state.write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        search(state_path=state)


def test_evolution_beats_random_on_a_structured_objective():
    evo = [best_so_far(search(seed=seed).run(150))[-1] for seed in range(5)]
    rnd = [best_so_far(search(strategy="random", seed=seed).run(150))[-1] for seed in range(5)]
    assert np.mean(evo) > np.mean(rnd) + 0.03


def test_pareto_mode_returns_a_front():
    s = search(pareto=True, budget=None)
    s.run(60)
    front = s.front()
    assert len(front) >= 2
    lat = [e.latency for e in front]
    acc = [e.accuracy for e in front]
    assert lat == sorted(lat) and acc == sorted(acc) and len(set(acc)) == len(acc)
    for e in s.history:  # nothing evaluated dominates a front member
        for f in front:
            assert not (e.accuracy >= f.accuracy and e.latency <= f.latency and (e.accuracy, e.latency) != (f.accuracy, f.latency))


def test_pareto_front_on_fixed_points():
    pts = [(0.5, 3.0), (0.7, 2.0), (0.6, 1.0), (0.7, 2.5), (0.9, 4.0), (0.2, 1.0), (0.9, 4.0)]
    assert pareto_front(pts) == [2, 1, 4]
    assert pareto_front([]) == []


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.1, 10)), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_non_dominated_points(pts):
    front = set(pareto_front(pts))

    def dominated(i):
        return any(pts[j][0] >= pts[i][0] and pts[j][1] <= pts[i][1] and pts[j] != pts[i] for j in range(len(pts)))

    for i, p in enumerate(pts):
        if dominated(i):
            assert i not in front
        else:  # a non-dominated point is in the front, or an equal point is
            assert any(pts[j] == p for j in front)


@pytest.mark.parametrize("kw,match", [
    (dict(budget=0.0), "budget must be > 0"),
    (dict(budget=-1e-3), "budget must be > 0"),
    (dict(budget=None), "budget is required"),
    (dict(strategy="annealing"), "unknown search strategy"),
    (dict(population=1), "population >= 2"),
    (dict(budget=1e-6), "below the space's fastest"),
])
def test_bad_settings_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        search(**kw)


def test_best_is_the_most_accurate_evaluated():
    s = search()
    s.run(20)
    assert s.best().accuracy == max(e.accuracy for e in s.history)
    assert np.all(np.diff(best_so_far(s.history)) >= 0)
