"""Model instances in worker processes: a crash, a hang or a leak in a model cannot take the server down.

    ProcessInstance   a Backend that runs another backend in a process of its own, spawned (never
                      forked: the server has threads). Tensors cross through two shared-memory
                      regions the server owns, one for requests and one for results; the socket
                      carries one small frame each way per call (names, dtypes, shapes, offsets).
    supervisor        one thread per instance waits on the process's sentinel: a worker that exits
                      or is killed (os._exit, segfault, SIGKILL, the OOM killer) is logged at once and
                      restarted with backoff; the call in flight fails with WorkerDiedError, or runs
                      once more on the restarted worker when the model is ``idempotent``; a call over
                      ``execution_timeout_ms`` kills the worker (and so restarts it).

A call is one round trip whatever the batch: the scheduler hands a whole batch to ``infer`` (merged)
or ``infer_many`` (a python model's request list), and it crosses as one frame. The frames are
marshalled plain values (no pickles: the server never unpickles what a worker, user code, sends).
Both sides spin briefly on the socket before they block (``_SPIN_REPLY_S``, ``_SPIN_NEXT_S``): a
reply that comes within tens of microseconds then costs no sleep and wake-up of a process; the spin
yields the core to anything else runnable on every turn, and gives up after its bound.

Like Triton's python backend (a stub process per instance, tensors in shared memory), but one
mechanism for every backend. Chosen per model in config.pbtxt::

    parameters { key: "instance_isolation" value: { string_value: "process" } }   # or "thread"
    parameters { key: "execution_timeout_ms" value: { string_value: "5000" } }    # process only
    parameters { key: "idempotent" value: { string_value: "true" } }              # process only
    parameters { key: "load_timeout_ms" value: { string_value: "60000" } }        # process only

python-backend models default to "process", the others to "thread". A worker whose model does not
finish loading (a python model's ``initialize``) within the load timeout (``load_timeout_ms``, else
the server's ``--model-load-timeout-secs``) is killed and the load fails.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import marshal
import math
import multiprocessing as mp
import os
import select
import signal
import threading
import time
from multiprocessing.connection import wait
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from tuili.backends.base import Backend, config_parameter, create_backend
from tuili.errors import ConfigError, KernelError, ModelLoadError, TuiliError, WorkerDiedError
from tuili.model_config import TensorSpec

log = logging.getLogger(__name__)

ISOLATIONS = ("thread", "process")
_ALIGN = 64
_MIN_REGION = 1 << 20
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 30.0
_STOP_WAIT_S = 10.0
#: How long a call of an idempotent model waits for its dead worker's replacement before it fails.
_RETRY_WAIT_S = 30.0
#: How long a worker may take to load its model when neither the config nor the server says (0: no limit).
DEFAULT_LOAD_TIMEOUT_S = 600.0
#: How long the server spins for a worker's reply, and a worker for the next call, before blocking.
_SPIN_REPLY_S = 200e-6
_SPIN_NEXT_S = 100e-6
_READ = 1 << 16


# --------------------------------------------------------------------------- configuration
def instance_isolation(config, backend: str) -> str:
    """How the instances of a model run: ``"process"`` or ``"thread"`` (the config's
    ``instance_isolation`` parameter; python models default to process). The parameters that only
    a worker process can honour (``execution_timeout_ms``, ``idempotent``) are refused with threads."""
    value = config_parameter(config, "instance_isolation") or ("process" if backend == "python" else "thread")
    if value not in ISOLATIONS:
        raise ConfigError(f"model {config.name!r}: parameter instance_isolation is {value!r}; use \"process\" or \"thread\"")
    if value != "process":
        why = ("execution_timeout_ms" if execution_timeout_s(config) else
               "load_timeout_ms" if config_parameter(config, "load_timeout_ms") else
               "idempotent" if idempotent(config) else "")
        if why:
            raise ConfigError(f"model {config.name!r}: {why} needs instance_isolation \"process\" (a thread cannot be "
                              f"stopped or restarted); add parameters {{ key: \"instance_isolation\" value: {{ string_value: "
                              f"\"process\" }} }}")
    return value


def _milliseconds_s(config, key: str, default: float) -> float:
    """The config's parameter ``key`` (whole milliseconds, 0 = no limit) in seconds; ``default`` when unset."""
    raw = config_parameter(config, key)
    if raw is None or raw == "":
        return default
    try:
        ms = int(raw)
    except ValueError:
        ms = -1
    if ms < 0:
        raise ConfigError(f"model {config.name!r}: parameter {key} is {raw!r}; give a whole number of "
                          f"milliseconds (0 = no limit)")
    return ms / 1000


def execution_timeout_s(config) -> float:
    """The config's ``execution_timeout_ms`` in seconds, 0 for none."""
    return _milliseconds_s(config, "execution_timeout_ms", 0.0)


def load_timeout_s(config, default: float) -> float:
    """How long a worker may take to load its model (a python model's ``initialize``): the config's
    ``load_timeout_ms``, else ``default`` (the server's --model-load-timeout-secs); 0 for no limit."""
    return _milliseconds_s(config, "load_timeout_ms", default)


def idempotent(config) -> bool:
    """The config's ``idempotent``: running a request twice is harmless, so a request whose worker
    died runs once more on the restarted worker instead of failing."""
    raw = config_parameter(config, "idempotent")
    if raw is None or raw == "":
        return False
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ConfigError(f"model {config.name!r}: parameter idempotent is {raw!r}; use \"true\" or \"false\"")
    return value in ("true", "1")


# --------------------------------------------------------------------------- tensors in shared memory
# A tensor's descriptor: (name, dtype.str | "objects", shape, offset, nbytes), plain values. Object
# arrays (BYTES tensors: bytes items, sometimes str) are stored as the marshalled list of their items:
# plain values only, and 4-14x quicker both ways than a length-prefixed loop in Python.

_PLAIN = (bytes, str, int, float, bool, complex, type(None))


def _encode_objects(arr: np.ndarray) -> bytes:
    items = arr.reshape(-1).tolist()
    if not all(type(x) is bytes for x in items):  # BYTES tensors, the common case, need no look at each item
        # marshal would store any other buffer (a numpy scalar) as its raw bytes: plain values only
        items = [x.item() if isinstance(x, np.generic) else bytes(x) if isinstance(x, bytearray) else x for x in items]
        odd = sorted({type(x).__name__ for x in items if not isinstance(x, _PLAIN)})
        if odd:
            raise TypeError(f"an object tensor holds items of type {', '.join(odd)}; give bytes or str (a BYTES tensor) "
                            f"or numbers")
    return marshal.dumps(items)


def _decode_objects(data: memoryview, shape) -> np.ndarray:
    items = marshal.loads(data)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def layout(tensor_sets: list[dict[str, np.ndarray]]) -> tuple[list[list[tuple]], list[tuple[int, int, object]], int]:
    """Descriptors of each set's tensors, what to write where (offset, bytes, data), and the bytes needed."""
    metas, writes, offset = [], [], 0
    for tensors in tensor_sets:
        meta = []
        for name, arr in tensors.items():
            if type(arr) is not np.ndarray:
                arr = np.asarray(arr)
            if arr.dtype.hasobject:
                kind, data = "objects", _encode_objects(arr)
                nbytes = len(data)
            else:
                kind, data, nbytes = arr.dtype.str, arr, arr.nbytes
            meta.append((name, kind, arr.shape, offset, nbytes))
            writes.append((offset, nbytes, data))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        metas.append(meta)
    return metas, writes, offset


def write(buf: memoryview, writes: list[tuple[int, int, object]]) -> None:
    for offset, nbytes, data in writes:
        if isinstance(data, np.ndarray):
            try:  # a plain memory copy, three times quicker than numpy's assignment for small tensors
                buf[offset:offset + nbytes] = memoryview(data).cast("B")
            except (TypeError, ValueError, BufferError):  # not contiguous, or a type the buffer protocol lacks
                np.ndarray(data.shape, data.dtype, buffer=buf, offset=offset)[...] = data
        else:
            buf[offset:offset + nbytes] = data


def read(buf: memoryview, meta: list[tuple], copy: bool) -> dict[str, np.ndarray]:
    """The tensors one descriptor list names; views into ``buf`` unless ``copy``."""
    out = {}
    for name, kind, shape, offset, nbytes in meta:
        if kind == "objects":
            out[name] = _decode_objects(buf[offset:offset + nbytes], shape)
        else:
            arr = np.ndarray(shape, kind, buffer=buf, offset=offset)
            out[name] = arr.copy() if copy else arr
    return out


class Region:
    """A shared-memory buffer the server process owns; it grows by replacing itself (new name)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.shm: SharedMemory | None = None

    def ensure(self, size: int) -> None:
        if self.shm is not None and self.shm.size >= size:
            return
        old = self.shm
        self.shm = SharedMemory(create=True, size=max(size, _MIN_REGION, 2 * old.size if old else 0))
        self.name, self.size, self.buf = self.shm.name, self.shm.size, self.shm.buf
        if old is not None:
            _release(old, unlink=True)

    def close(self) -> None:
        if self.shm is not None:
            self.buf = None
            _release(self.shm, unlink=True)
            self.shm = None


class _Mapped:
    """The worker's mappings of the server's regions, remapped when the server names a new one."""

    def __init__(self):
        self.shm: dict[str, SharedMemory] = {}  # "requests" / "results" -> the region the server named last

    def buf(self, which: str, name: str) -> memoryview:
        shm = self.shm.get(which)
        if shm is None or shm.name != name:
            if shm is not None:
                _release(shm, unlink=False)
            shm = self.shm[which] = SharedMemory(name=name)
        return shm.buf


def _release(shm: SharedMemory, unlink: bool) -> None:
    try:
        shm.close()
    except BufferError:  # a model still holds a view of it: the mapping goes when that view does
        pass
    if unlink:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- frames on the socket
# One frame each way per call: ("run", many, requests region, results region, its size, descriptors)
# -> ("done", descriptors, {index: error}) or, when the results do not fit, ("grow", bytes needed) ->
# ("results", region, size) -> ("done", ...). ("stop",) -> ("stopped",) ends a worker. A frame is a
# 4-byte length and the marshalled tuple, written with one system call. The two sides take turns, so
# at most one frame is ever unread: one read takes it whole.

def _send(fd: int, *frame) -> None:
    data = marshal.dumps(frame)
    data = len(data).to_bytes(4, "little") + data
    while data:
        data = data[os.write(fd, data):]


def _recv(fd: int) -> tuple:
    data = os.read(fd, _READ)
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "little"):
        more = os.read(fd, _READ)
        if not more:
            raise EOFError("the other end of the worker socket closed")
        data += more
    return marshal.loads(memoryview(data)[4:])


def _poller(fd: int) -> select.poll:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return p


def _wait_readable(poller: select.poll, spin_s: float, timeout_s: float | None) -> bool:
    """Whether the socket has a frame (or its end: EOF) within ``timeout_s`` (None: no limit):
    polled without blocking for up to ``spin_s``, yielding the core on every turn, then waited for."""
    if poller.poll(0):
        return True
    start = time.perf_counter()
    end = start + (spin_s if timeout_s is None else min(spin_s, timeout_s))
    while time.perf_counter() < end:
        os.sched_yield()
        if poller.poll(0):
            return True
    if timeout_s is None:
        return bool(poller.poll())
    return bool(poller.poll(max(0, math.ceil((start + timeout_s - time.perf_counter()) * 1000))))


# --------------------------------------------------------------------------- errors across the socket
def _error_payload(e: BaseException) -> tuple[str, str]:
    if isinstance(e, TuiliError):
        return type(e).__name__, str(e)
    return "", f"{type(e).__name__}: {e}"


def _error_classes(cls=TuiliError) -> dict[str, type]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_error_classes(sub))
    return out


def _rebuild_error(model: str, payload: tuple[str, str]) -> TuiliError:
    cls_name, msg = payload
    cls = _error_classes().get(cls_name) if cls_name else None
    if cls is None:
        return KernelError(f"model {model!r}: {msg}")
    try:
        return cls(msg)
    except TypeError:  # a subclass with another constructor
        return KernelError(msg)


def _spec_values(spec: TensorSpec) -> dict:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}


# --------------------------------------------------------------------------- the worker process
def _die_with_parent() -> None:
    """Linux: the kernel kills this worker if the server dies, even while the model hangs."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn, backend_name: str, model_name: str, model_dir: str, version_dir: str, config_bytes: bytes,
                 index: int, count: int, allow_paths_outside: bool, log_level: int, cpus: set[int] | None = None) -> None:
    _die_with_parent()
    if cpus:  # the placement plan's core (serve/placement.py)
        os.sched_setaffinity(0, cpus)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [{model_name} worker {index}] %(name)s: %(message)s")
    from tuili.model_config import ModelConfig

    config = ModelConfig()
    config.ParseFromString(config_bytes)
    fd = conn.fileno()
    try:
        backend = create_backend(backend_name)
        backend.model_name, backend.instance_index, backend.instance_count = model_name, index, count
        backend.allow_paths_outside = allow_paths_outside
        backend.load(model_dir, version_dir, config)
    except BaseException as e:  # noqa: BLE001 - reported to the server, which raises it
        _send(fd, "error", _error_payload(e))
        return
    _send(fd, "ready", [_spec_values(s) for s in backend.inputs], [_spec_values(s) for s in backend.outputs],
          backend.wants_request_list)
    _serve(fd, backend)


def _serve(fd: int, backend: Backend) -> None:
    """Answer calls until the server says stop or goes away."""
    regions = _Mapped()
    poller = _poller(fd)
    while True:
        _wait_readable(poller, _SPIN_NEXT_S, None)
        try:
            frame = _recv(fd)
        except (EOFError, OSError):  # the server went away
            return
        if frame[0] == "stop":
            backend.unload()
            _send(fd, "stopped")
            return
        if frame[0] == "stream":
            if not _stream(fd, backend, regions, frame):
                return
            continue
        _, many, req_name, res_name, res_size, metas = frame
        buf = regions.buf("requests", req_name)
        feeds = [read(buf, m, copy=False) for m in metas]
        try:
            results = backend.infer_many(feeds) if many else [backend.infer(feeds[0])]
        except Exception as e:  # noqa: BLE001 - the whole call failed
            results = [e] * len(feeds)
        del feeds, buf
        errs = {i: _error_payload(r) for i, r in enumerate(results) if isinstance(r, BaseException)}
        try:
            out_metas, writes, need = layout([({} if i in errs else r) for i, r in enumerate(results)])
        except Exception as e:  # noqa: BLE001 - outputs that are not tensors: every request of the call fails
            errs = {i: _error_payload(KernelError(f"the model returned outputs that are not tensors: {e}"))
                    for i in range(len(results))}
            out_metas, writes, need = [[] for _ in results], [], 0
        if need > res_size:  # the server grows the results region; these results then go there
            _send(fd, "grow", need)
            try:
                _, res_name, res_size = _recv(fd)
            except (EOFError, OSError):
                return
        write(regions.buf("results", res_name), writes)
        _send(fd, "done", out_metas, errs)


def _stream(fd: int, backend: Backend, regions: _Mapped, frame: tuple) -> bool:
    """A decoupled model's call: each response crosses as it is sent (a ("resp", ...) frame the server
    acknowledges, telling which requests were cancelled meanwhile), then ("done", ...). False if the
    server went away."""
    _, req_name, res_name, res_size, metas = frame
    buf = regions.buf("requests", req_name)
    feeds = [read(buf, m, copy=False) for m in metas]
    lock = threading.Lock()  # a model may send from threads of its own: one exchange at a time
    results = [res_name, res_size]
    cancelled: set[int] = set()

    def emit(i: int, outputs, error, final: bool) -> None:
        with lock:
            try:
                out_metas, writes, need = layout([outputs or {}])
            except Exception as e:  # noqa: BLE001 - outputs that are not tensors
                error = KernelError(f"the model sent outputs that are not tensors: {e}")
                out_metas, writes, need = [[]], [], 0
            if need > results[1]:
                _send(fd, "grow", need)
                _, results[0], results[1] = _recv(fd)
            write(regions.buf("results", results[0]), writes)
            meta = None if outputs is None and error is None else out_metas[0]  # None: a final response without one
            _send(fd, "resp", i, meta, None if error is None else _error_payload(error), final)
            cancelled.update(_recv(fd)[1])

    errs = {}
    try:
        backend.infer_decoupled(feeds, emit, cancelled.__contains__)
    except (EOFError, OSError):
        return False
    except Exception as e:  # noqa: BLE001 - the whole call failed
        errs = {i: _error_payload(e) for i in range(len(feeds))}
    n = len(feeds)
    del feeds, buf
    _send(fd, "done", [[] for _ in range(n)], errs)
    return True


# --------------------------------------------------------------------------- the server side
class _Link:
    """A running worker: its process, the socket to it (closed with the link), which start of the
    instance it is, and once the supervisor reaped it, its exit code. Only the supervisor reaps
    (joins) the process: two threads waiting for the same child race, and the loser is told the
    child is still running."""

    __slots__ = ("proc", "conn", "fd", "poller", "generation", "reaped", "exitcode")

    def __init__(self, proc, conn, generation: int):
        self.proc, self.conn, self.fd, self.generation = proc, conn, conn.fileno(), generation
        self.poller = _poller(self.fd)
        self.reaped, self.exitcode = False, None


class _Died(WorkerDiedError):
    """The worker of a call died; ``rerunnable``: the call may run again on its replacement."""

    def __init__(self, msg: str, generation: int, rerunnable: bool):
        super().__init__(msg)
        self.generation, self.rerunnable = generation, rerunnable


class ProcessInstance(Backend):
    """One model instance in its own worker process (see the module docstring)."""

    def __init__(self, backend_name: str, timeout_s: float = 0.0, cpus: list[set[int]] | None = None,
                 load_timeout_s: float = 0.0):
        """``timeout_s``: execution_timeout_ms; ``load_timeout_s``: how long the worker may take to load
        the model (0: no limit); ``cpus``: the CPUs each instance's worker runs on, by instance index (None: any)."""
        super().__init__()
        self.cpus = cpus
        self.backend_name = backend_name
        self.name = f"{backend_name} (process)"
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self.idempotent = False
        self._cond = threading.Condition()
        self._link: _Link | None = None  # None while the worker is down
        self._starts = 0
        self._stopping = False
        self._stop_event = threading.Event()
        self._death_reason = ""
        self._backoff = _BACKOFF_FIRST
        self._requests = Region("requests")
        self._results = Region("results")
        self._supervisor: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def load(self, model_dir: str, version_dir: str, config) -> None:
        self.idempotent = idempotent(config)
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        self._args = (self.backend_name, self.model_name, model_dir, version_dir, config.SerializeToString(),
                      self.instance_index, self.instance_count, self.allow_paths_outside,
                      logging.getLogger("tuili").getEffectiveLevel(),
                      self.cpus[self.instance_index % len(self.cpus)] if self.cpus else None)
        self._requests.ensure(_MIN_REGION)
        self._results.ensure(_MIN_REGION)
        try:
            link = self._start()
        except BaseException:
            self._requests.close()
            self._results.close()
            raise
        self._supervisor = threading.Thread(target=self._supervise, args=(link,), daemon=True,
                                            name=f"tuili-supervise-{self.model_name}-{self.instance_index}")
        self._supervisor.start()

    def _start(self) -> _Link | None:
        """Spawn a worker and wait until its model loaded; the load's error is raised here."""
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, *self._args), daemon=True,
                           name=f"tuili-worker-{self.model_name}-{self.instance_index}")
        proc.start()
        child.close()
        frame = None
        woken = wait([conn, proc.sentinel], self.load_timeout_s or None)
        if not woken:  # still loading: a hung initialize must not hold the load (nor a restart) forever
            proc.kill()
            proc.join()
            conn.close()
            s = self.load_timeout_s
            raise ModelLoadError(f"model {self.model_name!r} instance {self.instance_index}: the model did not finish loading "
                                 f"within {s:g} s (a python model's initialize() still running); its worker process "
                                 f"{proc.pid} was killed. Make the load quicker, or give the model more time with "
                                 f"parameters {{ key: \"load_timeout_ms\" ... }} or the server's --model-load-timeout-secs")
        if conn in woken:
            try:
                frame = _recv(conn.fileno())
            except (EOFError, OSError):
                pass
        if frame is None or frame[0] != "ready":
            proc.join(_STOP_WAIT_S)
            conn.close()
            if frame is None:
                raise WorkerDiedError(f"model {self.model_name!r} instance {self.instance_index}: the worker process {_exit_text(proc.exitcode)} "
                                      f"while loading the model; see the log above")
            raise _rebuild_error(self.model_name, frame[1])
        _, inputs, outputs, self.wants_request_list = frame
        self.inputs = [TensorSpec(**v) for v in inputs]
        self.outputs = [TensorSpec(**v) for v in outputs]
        log.info("model %s instance %d: worker process %d started (%s backend)", self.model_name, self.instance_index, proc.pid,
                 self.backend_name)
        with self._cond:
            if self._stopping:  # unloaded while this worker started: it never serves
                proc.kill()
                proc.join()
                conn.close()
                return None
            self._starts += 1
            self._link = _Link(proc, conn, self._starts)
            self._cond.notify_all()
            return self._link

    def _supervise(self, link: _Link) -> None:
        """Wait for the worker to die; log it, restart it with backoff; until unload."""
        while link is not None:
            wait([link.proc.sentinel])
            link.proc.join()  # reap it: the exit code says how it died
            with self._cond:
                self._link = None
                link.reaped, link.exitcode = True, link.proc.exitcode
                reason, self._death_reason = self._death_reason, ""
                self._cond.notify_all()
                if self._stopping:
                    return
            # The socket is not closed here: a call may still be reading it, and a closed descriptor's number
            # can be reused at once. It closes when the last holder lets go of the link (refcounting).
            log.error("model %s instance %d: worker process %d %s%s; restarting it in %.1f s", self.model_name, self.instance_index,
                      link.proc.pid, _exit_text(link.exitcode), f" ({reason})" if reason else "", self._backoff)
            while not self._stop_event.wait(self._backoff):
                self._backoff = min(2 * self._backoff, _BACKOFF_MAX)
                try:
                    link = self._start()
                    break
                except Exception as e:  # noqa: BLE001 - logged, and tried again later
                    log.error("model %s instance %d: restarting the worker failed: %s; next try in %.1f s", self.model_name,
                              self.instance_index, e, self._backoff)
            else:
                return

    @property
    def ready(self) -> bool:
        """Whether the worker is up (False while it restarts)."""
        return self._link is not None

    def wait_ready(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._link is not None or self._stopping, timeout)

    def kill(self, reason: str) -> None:
        """Kill the worker (it restarts unless the instance is unloading); the call in flight fails."""
        with self._cond:
            link = self._link
            if link is None:  # down already
                return
            self._death_reason = reason
        link.proc.kill()

    def unload(self) -> None:
        with self._cond:
            self._stopping = True
            link = self._link
            self._cond.notify_all()
        self._stop_event.set()
        if link is not None:
            try:
                _send(link.fd, "stop")
                if _wait_readable(link.poller, 0.0, _STOP_WAIT_S):
                    _recv(link.fd)
            except (OSError, EOFError):
                pass
        if self._supervisor is not None:  # it reaps the worker, and then returns
            self._supervisor.join(_STOP_WAIT_S)
            if self._supervisor.is_alive():
                log.warning("model %s instance %d: the worker did not stop within %.0f s; killing it", self.model_name,
                            self.instance_index, _STOP_WAIT_S)
                if link is not None:
                    link.proc.kill()
                self._supervisor.join()
        if link is not None:
            link.conn.close()
        self._requests.close()
        self._results.close()

    # -- inference --------------------------------------------------------------------------------
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        r = self._call(False, [feeds])[0]
        if isinstance(r, BaseException):
            raise r
        return r

    def infer_many(self, requests: list[dict[str, np.ndarray]]) -> list:
        return self._call(True, requests)

    def infer_decoupled(self, requests: list[dict[str, np.ndarray]], emit, cancelled) -> None:
        """A decoupled model's call: responses are handed to ``emit`` as they arrive. Never run twice (its
        responses may have been sent already)."""
        def on_response(frame: tuple) -> list[int]:
            _, i, meta, error, final = frame
            outputs = None if error is not None or meta is None else read(self._results.buf, meta, copy=True)
            emit(i, outputs, None if error is None else _rebuild_error(self.model_name, error), final)
            return [j for j in range(len(requests)) if cancelled(j)]

        failed = [r for r in self._round_trip(True, requests, on_response) if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    @property
    def _where(self) -> str:
        return f"model {self.model_name!r} instance {self.instance_index}"

    def _call(self, many: bool, requests: list[dict[str, np.ndarray]]) -> list:
        try:
            return self._round_trip(many, requests)
        except _Died as e:
            if not (self.idempotent and e.rerunnable):
                raise
            log.warning("model %s instance %d: %s; the model is idempotent: running the %d request(s) once more on the "
                        "restarted worker", self.model_name, self.instance_index, e, len(requests))
            if not self._wait_restarted(e.generation, _RETRY_WAIT_S):
                raise
        return self._round_trip(many, requests)

    def _wait_restarted(self, generation: int, timeout: float) -> bool:
        """Whether a worker newer than ``generation`` is up within ``timeout`` (False on unload)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or (self._link is not None and self._link.generation > generation), timeout)
            return not self._stopping and self._link is not None and self._link.generation > generation

    def _round_trip(self, many: bool, requests: list[dict[str, np.ndarray]], on_response=None) -> list:
        """One call: the requests in, their results out. ``on_response``: a decoupled call, whose responses
        come one by one (it returns the indexes of the requests cancelled so far, for the worker)."""
        with self._cond:
            link = self._link
            generation = self._starts
        if link is None:
            raise _Died(f"{self._where}: the worker process is restarting; retry the request", generation, True)
        metas, writes, need = layout(requests)
        self._requests.ensure(need)
        write(self._requests.buf, writes)
        try:
            if on_response is None:
                _send(link.fd, "run", many, self._requests.name, self._results.name, self._results.size, metas)
            else:
                _send(link.fd, "stream", self._requests.name, self._results.name, self._results.size, metas)
            frame = self._reply(link)
            while frame[0] != "done":
                if frame[0] == "grow":  # the results do not fit: a larger region, and the worker writes them there
                    self._results.ensure(frame[1])
                    _send(link.fd, "results", self._results.name, self._results.size)
                else:  # "resp": one response of a decoupled call
                    _send(link.fd, "ack", on_response(frame))
                frame = self._reply(link)
        except (OSError, EOFError):
            # Only the worker holds the other end of the socket: its death is an EOF here, no sentinel needed.
            with self._cond:  # the supervisor reaps it: then the exit code says how it died
                self._cond.wait_for(lambda: link.reaped, 1.0)
            raise _Died(f"{self._where}: the worker process {_exit_text(link.exitcode)} while running the request; "
                        f"it restarts, retry the request", link.generation, True) from None
        _, out_metas, errs = frame
        buf = self._results.buf
        results: list = [read(buf, m, copy=True) for m in out_metas]
        for i, payload in errs.items():
            results[i] = _rebuild_error(self.model_name, payload)
        self._backoff = _BACKOFF_FIRST  # it works: the next crash restarts at once again
        return results

    def _reply(self, link: _Link) -> tuple:
        """The worker's next frame; a worker past ``execution_timeout_ms`` is killed."""
        if not _wait_readable(link.poller, _SPIN_REPLY_S, self.timeout_s or None):
            ms = int(self.timeout_s * 1000)
            self.kill(f"no answer within execution_timeout_ms={ms}")
            raise _Died(f"{self._where}: the model did not answer within execution_timeout_ms={ms}; its worker was killed and "
                        f"restarts", link.generation, False)
        return _recv(link.fd)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
