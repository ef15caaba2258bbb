"""Timing shared by the benchmarks: the same work on several engines, alternating, on a shared machine.

Absolute times on a shared 2-core machine are noise; ratios measured in one run, with the engines
interleaved so a change of load hits them alike, are not.
"""
from __future__ import annotations

import statistics
import time


def time_calls(fn, *, warmup: int, repeat: int, min_repeat: int, budget: float) -> tuple[float, int]:
    """Median seconds of ``fn()`` after ``warmup`` calls; at most ``repeat`` timed calls, at most
    ``budget`` seconds (but never fewer than ``min_repeat`` timed calls). Returns (median, n)."""
    return time_interleaved({"x": fn}, warmup=warmup, repeat=repeat, min_repeat=min_repeat, budget=budget,
                            settle=0.0)["x"]


def time_interleaved(fns: dict, *, warmup: int, repeat: int, min_repeat: int, budget: float,
                     settle: float, block: int = 5) -> dict:
    """Time several engines on the same work in alternating blocks of ``block`` calls (A A A, B B B,
    A A A, ...), so a change in machine load hits all of them alike. Each engine gets ``warmup``
    untimed calls first; timing stops at ``repeat`` calls per engine, or once ``budget`` seconds per
    engine have been spent (after at least ``min_repeat`` calls). ``settle`` seconds of sleep before
    each switch of engine let the previous engine's spinning worker threads go idle: OpenBLAS's
    spin for ~0.1 s after a call, and a 0.05 s pause made onnxruntime look 3x slower after tuili.
    Returns {name: (median seconds, n) or "error (...)"}."""
    live: dict = {}
    out: dict = {}
    for name, fn in fns.items():
        try:
            t0 = time.perf_counter()
            for _ in range(warmup):  # a slow model (> budget/3 s) warms up with one call
                fn()
                if time.perf_counter() - t0 > budget / 3:
                    break
            live[name] = fn
        except Exception as e:  # noqa: BLE001 - one failing engine must not end the benchmark
            out[name] = f"error ({type(e).__name__})"
        time.sleep(settle)
    times: dict[str, list[float]] = {k: [] for k in live}
    spent = 0.0
    rounds = 0
    while live and rounds < repeat:
        for name, fn in live.items():
            if len(live) > 1:
                time.sleep(settle)
            for _ in range(min(block, repeat - rounds)):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[name].append(dt)
                spent += dt
        rounds += min(block, repeat - rounds)
        if rounds >= min_repeat and spent > budget * len(live):
            break
    for name, ts in times.items():
        out[name] = (statistics.median(ts), len(ts))
    return out
