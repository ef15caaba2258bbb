"""How many threads a session's kernels use, set in one place for every pool they run on.

The kernels run on three thread pools: OpenBLAS (numpy's matmuls, through threadpoolctl), torch's
intra-op pool (oneDNN convolutions, OpenMP) and numba's (parallel loops, when one is up).
``Threads(n).limit()`` sets all of them for the calling thread's run and restores them after.

The default never oversubscribes: at most the cores this process may run on
(``os.sched_getaffinity``), and with ``threads=None`` each run also leaves out the cores other
processes are busy on (the kernel's instantaneous count of runnable tasks, /proc/loadavg). The
pools split work statically, so a pool of N threads on fewer free cores waits at every barrier for
the thread that was preempted: measured on 2 cores with one competing CPU-bound process, a
2-thread run of ResNet-18 was several times slower than a 1-thread run (see docs/engine.md).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any

from tuili.errors import ConfigError

log = logging.getLogger(__name__)

_LOADAVG = "/proc/loadavg"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def runnable_elsewhere() -> int | None:
    """Tasks runnable right now on the machine besides the caller (None where it cannot be read)."""
    try:
        with open(_LOADAVG, "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


def idle_cores(cap: int) -> int:
    """How many of ``cap`` threads would find a core nobody else is running on (at least 1)."""
    busy = runnable_elsewhere()
    if busy is None:
        return cap
    machine = os.cpu_count() or cap
    return max(1, min(cap, machine - busy))


class Threads:
    """The thread count of one session's runs.

    ``Threads(n)``: every run uses ``n`` threads in every pool. ``Threads(None)``: each run uses the
    idle cores among those available (``idle_cores``), re-read per run (~10 µs)."""

    def __init__(self, threads: int | None = None):
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
            raise ConfigError(f"threads must be a positive int (or None/0 for the default), got {threads!r}")
        self.fixed = threads or None
        self.cap = self.fixed or available_cores()
        self._blas: Any = None
        self._blas_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Threads({self.fixed if self.fixed else f'auto <= {self.cap}'})"

    def now(self) -> int:
        """The thread count the next run uses."""
        return self.fixed or idle_cores(self.cap)

    def _blas_controller(self) -> Any:
        # found once (per session): threadpool_limits() rescans the loaded libraries on every call (~0.7 ms)
        if self._blas is None:
            with self._blas_lock:
                if self._blas is None:
                    from threadpoolctl import ThreadpoolController

                    self._blas = ThreadpoolController().select(user_api="blas")
        return self._blas

    @contextmanager
    def limit(self):
        """Run the body with every kernel pool limited to ``now()`` threads (in this thread)."""
        n = self.now()
        torch = sys.modules.get("torch")  # only a torch the kernels already use: never import it here
        torch_before = None
        if torch is not None:
            torch_before = torch.get_num_threads()
            if torch_before != n:
                torch.set_num_threads(n)
        numba_before = _set_numba(n)
        try:
            with self._blas_controller().limit(limits=n):
                yield n
        finally:
            if torch is not None and torch_before != n:
                torch.set_num_threads(torch_before)
            if numba_before is not None:
                _set_numba(numba_before)


def _set_numba(n: int) -> int | None:
    """Limit numba's parallel pool to n threads if one is running; returns the previous count."""
    numba = sys.modules.get("numba")
    if numba is None:
        return None
    try:
        from numba.np.ufunc import parallel

        if not parallel._is_initialized:  # no parallel kernel ran: starting the pool would cost more
            return None
        before = numba.get_num_threads()
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        return before
    except Exception:  # noqa: BLE001 - numba internals moved: leave its pool alone
        return None
