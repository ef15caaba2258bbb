"""Memory of a plan: when each value dies, and where kernels' temporaries live.

* Liveness: every slot is released right after the last step that reads it (graph inputs, outputs
  and constants are kept), so a run holds only the intermediate arrays still ahead of it.
* Scratch: kernels ask ``tuili.ops.registry.scratch()`` for temporaries they never return (padded
  inputs, im2col matrices); while a plan runs, that is the plan's ``ScratchPool``, which hands each
  thread the buffers it used before instead of fresh allocations (a fresh 2 MB array costs ~0.1 ms
  of page faults on every call).
* Arena plan (``plan_memory``): every intermediate tensor gets an offset in one arena, tensors
  whose lifetimes overlap never sharing bytes; views (Reshape, Flatten, ...) share their input's
  buffer and elementwise ops write over an input they are the last reader of. Reported beside the
  lower bound, the largest sum of buffers live at one step. The executor does not allocate from the
  arena yet (kernels allocate their outputs, or oneDNN does): the plan is a report.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tuili.ops.registry import Scratch

if TYPE_CHECKING:
    from tuili.runtime.planner import Plan

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- the arena plan
#: ops whose output is (or may be) a view of their first input: no bytes of their own
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
#: ops that may write their output over an input of the same size when they are its last reader
INPLACE_OPS = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip", "Elu", "Selu", "Gelu",
    "FastGelu", "QuickGelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Softplus", "Mish",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Where", "Softmax", "LogSoftmax",
    "BatchNormalization", "LayerNormalization", "Dropout"})
ALIGN = 64  # bytes: every buffer starts on a cache line


@dataclass
class Buffer:
    """One arena buffer: the values that live in it (the first produced it; the others are views
    of it or in-place results over it), its size and the steps it is live over (inclusive)."""
    slots: list[int]
    nbytes: int
    start: int
    end: int
    offset: int = -1

    def overlaps(self, other: Buffer) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena: int        # bytes of the arena holding every buffer at its offset
    lower_bound: int  # the largest sum of buffers live at one step: no placement does better
    unshared: int     # bytes if every intermediate tensor had its own allocation
    names: dict[int, str]

    @property
    def ratio(self) -> float:
        return self.arena / self.lower_bound if self.lower_bound else 1.0

    def largest(self, top: int = 5) -> list[tuple[str, int]]:
        """The ``top`` largest buffers as (the name of the value that produced it, bytes)."""
        big = sorted(self.buffers, key=lambda b: -b.nbytes)[:top]
        return [(self.names.get(b.slots[0], f"slot {b.slots[0]}"), b.nbytes) for b in big]

    def summary(self) -> str:
        mb = 1 << 20
        return (f"arena {self.arena / mb:.2f} MB, lower bound {self.lower_bound / mb:.2f} MB "
                f"({self.ratio:.3f}x), without reuse {self.unshared / mb:.2f} MB, {len(self.buffers)} buffers")


def plan_memory(plan: Plan, nbytes: Mapping[int, int]) -> MemoryPlan:
    """The arena plan of ``plan`` for tensors of the given sizes (slot -> bytes, e.g. from one
    profiled run at a batch size; a slot without a size, such as a sequence, is left out).
    Graph inputs and constants are not in the arena; graph outputs live to the last step."""
    external = set(plan.inputs) | {s for s, _ in plan.consts} | set(plan.capture_slots)
    end_step = len(plan.steps)
    last: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for s in (*step.args, *step.captures):
            if s >= 0:
                last[s] = i
    for s in plan.outputs:
        last[s] = end_step
    buffer_of: dict[int, Buffer] = {}
    buffers: list[Buffer] = []
    for i, step in enumerate(plan.steps):
        first = step.args[0] if step.args else -1
        for k, s in enumerate(step.outs):
            size = nbytes.get(s, 0) if s >= 0 else 0
            if size <= 0 or s in buffer_of:
                continue
            if k == 0 and step.op_type in VIEW_OPS and first in external:
                external.add(s)  # a view of a feed or weight (Reshape of a weight): no arena bytes
                continue
            host = _host(step, k, first, size, i, buffer_of, last, nbytes)
            if host is None:
                host = Buffer([], size, i, i)
                buffers.append(host)
            host.slots.append(s)
            host.end = max(host.end, last.get(s, i))
            buffer_of[s] = host
    lower = _lower_bound(buffers, end_step)
    arena, best = min((_place(buffers, order), n) for n, order in enumerate(_ORDERS))
    _place(buffers, _ORDERS[best])
    unshared = sum(nbytes.get(s, 0) for step in plan.steps for s in step.outs if s >= 0)
    return MemoryPlan(buffers, arena, lower, unshared, plan.names)


def _host(step: Any, k: int, first: int, size: int, i: int, buffer_of: dict[int, Buffer],
          last: dict[int, int], nbytes: Mapping[int, int]) -> Buffer | None:
    """The buffer output ``k`` of step ``i`` may share: its first input's (a view), an input
    of the same size this step is the last reader of (in place), or None (a buffer of its own)."""
    if k != 0:
        return None
    if step.op_type in VIEW_OPS and first >= 0 and first in buffer_of:
        return buffer_of[first]
    if step.op_type in INPLACE_OPS:
        for s in step.args:
            b = buffer_of.get(s)
            if b is not None and nbytes.get(s) == size and b.nbytes == size and \
                    max(last.get(x, -1) for x in b.slots) == i:
                return b
    return None


def _lower_bound(buffers: list[Buffer], n_steps: int) -> int:
    delta = [0] * (n_steps + 2)
    for b in buffers:
        delta[b.start] += b.nbytes
        delta[b.end + 1] -= b.nbytes
    best = live = 0
    for d in delta:
        live += d
        best = max(best, live)
    return best


_ORDERS = (  # placement orders tried; the smallest arena wins
    lambda b: (-b.nbytes, b.start),
    lambda b: (-b.nbytes, -(b.end - b.start)),
    lambda b: (-b.nbytes * (b.end - b.start + 1), b.start),
    lambda b: (-(b.end - b.start), -b.nbytes),
    lambda b: (b.start, -b.nbytes),
    lambda b: (-b.end, -b.nbytes),
)


def _place(buffers: list[Buffer], order: Any) -> int:
    """Best-fit placement in ``order``: each buffer takes the smallest gap between the buffers
    already placed that overlap it in time (or goes on top). Returns the arena size."""
    placed: list[Buffer] = []
    arena = 0
    for b in sorted(buffers, key=order):
        busy = sorted((p.offset, p.offset + _aligned(p.nbytes)) for p in placed if p.overlaps(b))
        need = _aligned(b.nbytes)
        best, best_gap, cursor = -1, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= need and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, hi)
        b.offset = best if best >= 0 else cursor
        arena = max(arena, b.offset + b.nbytes)
        placed.append(b)
    return arena


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# ----------------------------------------------------------------------------- the C heap
@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``). Planning frees
    temporaries as large as the weights (decoded initializers, folded copies) that glibc would
    otherwise keep mapped: ResNet-18's session held 193 MB before, 131 MB after. False where there is
    no glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True

