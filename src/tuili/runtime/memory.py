"""Memory of a plan: when each value dies, and where kernels' temporaries live.

* Liveness: every slot is released right after the last step that reads it (graph inputs, outputs
  and constants are kept), so a run holds only the intermediate arrays still ahead of it.
* Scratch: kernels ask ``tuili.ops.registry.scratch()`` for temporaries they never return (padded
  inputs, im2col matrices); while a plan runs, that is the plan's ``ScratchPool``, which hands each
  thread the buffers it used before instead of fresh allocations (a fresh 2 MB array costs ~0.1 ms
  of page faults on every call).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from tuili.ops.registry import Scratch

if TYPE_CHECKING:
    from tuili.runtime.planner import Plan


def plan_releases(plan: Plan) -> None:
    """Set each step's ``free``: the slots whose last reader it is (outputs, inputs, constants and
    captured outer values are never released)."""
    keep = set(plan.outputs) | {s for s, _ in plan.consts} | set(plan.inputs) | set(plan.capture_slots)
    last: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for s in (*step.args, *step.captures):
            if s >= 0:
                last[s] = i
        for s in step.outs:
            if s >= 0:
                last.setdefault(s, i)  # never read: released right after it is produced
    frees: dict[int, list[int]] = {}
    for s, i in last.items():
        if s not in keep:
            frees.setdefault(i, []).append(s)
    for i, step in enumerate(plan.steps):
        step.free = tuple(frees.get(i, ()))


class ScratchPool(Scratch):
    """Reused temporaries: each thread keeps its recently used buffers (LRU by key, shape and dtype,
    at most ``max_bytes`` per thread). Threads never share a buffer, so concurrent runs are safe; a
    request larger than half the budget is allocated per call."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self._local = threading.local()

    def buffer(self, key: Hashable, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, bool]:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > self.max_bytes // 2:
            return np.empty(shape, dtype=dtype), True
        local = self._local
        cache = getattr(local, "cache", None)
        if cache is None:
            cache = local.cache = OrderedDict()
            local.nbytes = 0
        k = (key, tuple(shape), dtype.str)
        buf = cache.get(k)
        if buf is not None:
            cache.move_to_end(k)
            return buf, False
        buf = cache[k] = np.empty(shape, dtype=dtype)
        local.nbytes += nbytes
        while local.nbytes > self.max_bytes and len(cache) > 1:
            _, old = cache.popitem(last=False)
            local.nbytes -= old.nbytes
        return buf, True

    def held_bytes(self) -> int:
        """Bytes this thread's pool holds."""
        return getattr(self._local, "nbytes", 0)


#: the pool plans use unless given another: one per process, as the kernels had before
SHARED_SCRATCH = ScratchPool()
