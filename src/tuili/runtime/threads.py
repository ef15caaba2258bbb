"""How many threads a session's kernels use, set in one place for every pool they run on.

The kernels run on three thread pools: OpenBLAS (numpy's matmuls, through threadpoolctl), torch's
intra-op pool (oneDNN convolutions, OpenMP) and numba's (parallel loops, when one is up).
``Threads(n).limit()`` sets all of them for the calling thread's run and restores them after.

Nothing oversubscribes: a session uses at most ``threads`` (default: the cores this process may
run on, ``os.sched_getaffinity``), and each run leaves out the cores other processes are busy on
right now (the kernel's instantaneous count of runnable tasks, /proc/loadavg, minus this process's
own). OpenBLAS and OpenMP split work statically, so a pool of N threads on fewer free cores waits
at every barrier for its preempted thread: measured on 2 shared cores under load, ResNet-18 b1 ran
in 611 ms with 2 threads and 164-186 ms with 1 (onnxruntime, 2 threads: 261 ms).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
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
    """Tasks of other processes runnable right now (None where it cannot be read). This process's own
    threads do not count: the pools' workers still spinning after the previous run are not load."""
    try:
        with open(_LOADAVG, "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None
    if running <= 1:  # only the caller: the common quiet case costs one read
        return 0
    return max(0, running - _own_running())


def _own_running() -> int:
    """Threads of this process in state R (running or runnable), the caller included."""
    n = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        if stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] == b"R":
            n += 1
    return max(n, 1)


_RECHECK = 0.005  # seconds a reading of the machine's load stays good (it costs ~0.2 ms when busy)
_last: tuple[float, int | None] = (-1.0, 0)  # (monotonic time, runnable_elsewhere) of the last reading, shared by all sessions


def idle_cores(cap: int) -> int:
    """How many of ``cap`` threads would find a core nobody else is running on (at least 1)."""
    global _last
    now = time.monotonic()
    if now - _last[0] < _RECHECK:
        busy: int | None = _last[1]
    else:
        busy = runnable_elsewhere()
        _last = (now, busy)
    if busy is None:
        return cap
    machine = os.cpu_count() or cap
    return max(1, min(cap, machine - busy))


class Threads:
    """The thread count of one session's runs.

    ``Threads(n)``: runs use up to ``n`` threads in every pool; ``Threads(None)``: up to the cores
    this process may run on. Each run takes as many as find an idle core (``idle_cores``, re-read
    per run: one /proc read when the machine is quiet), never fewer than one: a pool wider than the
    free cores stalls at every barrier behind its preempted thread, while onnxruntime's pool, whose
    caller and workers claim chunks of work dynamically, degrades gracefully."""

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
        return idle_cores(self.cap)

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
