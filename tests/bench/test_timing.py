"""The benchmarks' interleaved timer: engines alternate in blocks, failures are reported, limits hold."""
from __future__ import annotations

from tuili.bench.timing import time_calls, time_interleaved


def test_engines_alternate_in_blocks_and_a_failure_is_reported():
    calls: list[str] = []

    def boom():
        raise RuntimeError("no")

    out = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "bad": boom},
                           warmup=1, repeat=6, min_repeat=6, budget=10.0, settle=0.0, block=3)
    assert out["bad"] == "error (RuntimeError)"
    assert out["a"][1] == out["b"][1] == 6
    timed = calls[2:]  # after one warm-up call each
    assert timed == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3


def test_budget_stops_after_min_repeat():
    median, n = time_calls(lambda: None, warmup=0, repeat=1000, min_repeat=5, budget=0.0)
    assert n == 5 and median >= 0
