"""Latency in onnxruntime, measured the way the quantizer needs it: variants taking turns (so a noisy,
shared machine slows them alike), medians, at the deployment batch."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from tuili.ir import Graph


def ort_session(model, threads: int | None = None):
    """An onnxruntime CPU session of a Graph, ModelProto, bytes or path, at full optimization."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if isinstance(model, Graph):
        model = model.to_proto()
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def medians(fns: Mapping[str, Callable[[], object]], *, warmup: int = 3, repeat: int = 30,
            budget: float = 0.5) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round; stops after
    ``repeat`` rounds or ``budget`` seconds (at least 5 rounds)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    t_end = time.perf_counter() + budget
    for r in range(repeat):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
        if r >= 4 and time.perf_counter() > t_end:
            break
    return {k: float(np.median(v)) for k, v in times.items()}


def compare(models: Mapping[str, object], feeds: Mapping[str, np.ndarray], threads: int | None = None,
            **kw) -> dict[str, float]:
    """Median seconds of each model (Graph/proto/path) on ``feeds`` in onnxruntime, taking turns."""
    sessions = {k: ort_session(m, threads) for k, m in models.items()}
    return medians({k: (lambda s=s: s.run(None, dict(feeds))) for k, s in sessions.items()}, **kw)


__all__ = ["compare", "medians", "ort_session"]
