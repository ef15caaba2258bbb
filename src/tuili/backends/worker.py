"""Model instances in worker processes: a crash, a hang or a leak in a model cannot take the server down.

    ProcessInstance   a Backend that runs another backend in a process of its own, spawned (never
                      forked: the server has threads). Tensors cross through two shared-memory
                      regions the server owns, one for requests and one for results; the pipe
                      carries only small control messages (names, dtypes, shapes, offsets).
    supervisor        one thread per instance waits on the process's sentinel: a worker that exits
                      or is killed (os._exit, segfault, SIGKILL, the OOM killer) is logged at once and
                      restarted with backoff; the call in flight fails with WorkerDiedError; a call
                      over ``execution_timeout_ms`` kills the worker (and so restarts it).

Like Triton's python backend (a stub process per instance, tensors in shared memory), but one
mechanism for every backend. Chosen per model in config.pbtxt::

    parameters { key: "instance_isolation" value: { string_value: "process" } }   # or "thread"
    parameters { key: "execution_timeout_ms" value: { string_value: "5000" } }    # process only

python-backend models default to "process", the others to "thread".
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import pickle
import select
import signal
import threading
from multiprocessing.connection import wait
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from tuili.backends.base import Backend, config_parameter, create_backend
from tuili.errors import ConfigError, KernelError, TuiliError, WorkerDiedError

log = logging.getLogger(__name__)

ISOLATIONS = ("thread", "process")
_ALIGN = 64
_MIN_REGION = 1 << 20
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 30.0
_STOP_WAIT_S = 10.0


# --------------------------------------------------------------------------- configuration
def instance_isolation(config, backend: str) -> str:
    """How the instances of a model run: ``"process"`` or ``"thread"`` (the config's
    ``instance_isolation`` parameter; python models default to process)."""
    value = config_parameter(config, "instance_isolation") or ("process" if backend == "python" else "thread")
    if value not in ISOLATIONS:
        raise ConfigError(f"model {config.name!r}: parameter instance_isolation is {value!r}; use \"process\" or \"thread\"")
    timeout = execution_timeout_s(config)
    if timeout and value != "process":
        raise ConfigError(f"model {config.name!r}: execution_timeout_ms needs instance_isolation \"process\" (a thread cannot be "
                          f"stopped); add parameters {{ key: \"instance_isolation\" value: {{ string_value: \"process\" }} }}")
    return value


def execution_timeout_s(config) -> float:
    """The config's ``execution_timeout_ms`` in seconds, 0 for none."""
    raw = config_parameter(config, "execution_timeout_ms")
    if raw is None or raw == "":
        return 0.0
    try:
        ms = int(raw)
    except ValueError:
        ms = -1
    if ms < 0:
        raise ConfigError(f"model {config.name!r}: parameter execution_timeout_ms is {raw!r}; give a whole number of "
                          f"milliseconds (0 = no limit)")
    return ms / 1000


# --------------------------------------------------------------------------- tensors in shared memory
# A tensor's descriptor: (name, dtype | "bytes" | "pickle", shape, offset, nbytes). BYTES tensors (object
# arrays of bytes) are stored as 4-byte little-endian lengths + data, like the V2 binary form; other object
# arrays (rare: str items) as a pickle inside the region.

def _encode(arr: np.ndarray):
    if not arr.dtype.hasobject:
        return arr.dtype, arr
    flat = arr.reshape(-1)
    if all(isinstance(x, bytes) for x in flat):
        return "bytes", b"".join(len(x).to_bytes(4, "little") + x for x in flat)
    return "pickle", pickle.dumps(arr, protocol=5)


def _decode_bytes(mv: memoryview, shape) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        n = int.from_bytes(mv[pos:pos + 4], "little")
        out[i] = bytes(mv[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out.reshape(shape)


def layout(tensor_sets: list[dict[str, np.ndarray]]) -> tuple[list[list[tuple]], list[tuple[int, object]], int]:
    """Descriptors of each set's tensors, what to write where, and the bytes needed."""
    metas, writes, offset = [], [], 0
    for tensors in tensor_sets:
        meta = []
        for name, arr in tensors.items():
            arr = np.asarray(arr)
            kind, data = _encode(arr)
            nbytes = data.nbytes if isinstance(data, np.ndarray) else len(data)
            meta.append((name, kind, arr.shape, offset, nbytes))
            writes.append((offset, data))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        metas.append(meta)
    return metas, writes, offset


def write(buf: memoryview, writes: list[tuple[int, object]]) -> None:
    for offset, data in writes:
        if isinstance(data, np.ndarray):
            np.ndarray(data.shape, data.dtype, buffer=buf, offset=offset)[...] = data
        else:
            buf[offset:offset + len(data)] = data


def read(buf: memoryview, meta: list[tuple], copy: bool) -> dict[str, np.ndarray]:
    """The tensors one descriptor list names; views into ``buf`` unless ``copy``."""
    out = {}
    for name, kind, shape, offset, nbytes in meta:
        if kind == "bytes":
            out[name] = _decode_bytes(buf[offset:offset + nbytes], shape)
        elif kind == "pickle":
            out[name] = pickle.loads(buf[offset:offset + nbytes])
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
        if old is not None:
            _release(old, unlink=True)

    @property
    def name(self) -> str:
        return self.shm.name

    @property
    def buf(self) -> memoryview:
        return self.shm.buf

    def close(self) -> None:
        if self.shm is not None:
            _release(self.shm, unlink=True)
            self.shm = None


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


# --------------------------------------------------------------------------- errors across the pipe
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


# --------------------------------------------------------------------------- the worker process
def _die_with_parent() -> None:
    """Linux: the kernel kills this worker if the server dies, even while the model hangs."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn, backend_name: str, model_name: str, model_dir: str, version_dir: str, config_bytes: bytes,
                 index: int, count: int, allow_paths_outside: bool, log_level: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [{model_name} worker {index}] %(name)s: %(message)s")
    from tuili.model_config import ModelConfig

    config = ModelConfig()
    config.ParseFromString(config_bytes)
    try:
        backend = create_backend(backend_name)
        backend.model_name, backend.instance_index, backend.instance_count = model_name, index, count
        backend.allow_paths_outside = allow_paths_outside
        backend.load(model_dir, version_dir, config)
    except BaseException as e:  # noqa: BLE001 - reported to the server, which raises it
        conn.send(("error", _error_payload(e)))
        return
    conn.send(("ready", backend.inputs, backend.outputs, backend.wants_request_list))
    mapped: dict[str, SharedMemory] = {}  # "requests" / "results" -> the region the server named last

    def region(which: str, name: str) -> memoryview:
        shm = mapped.get(which)
        if shm is None or shm.name.lstrip("/") != name.lstrip("/"):
            if shm is not None:
                _release(shm, unlink=False)
            shm = mapped[which] = SharedMemory(name=name)
        return shm.buf

    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the server went away
            break
        if msg[0] == "stop":
            backend.unload()
            conn.send(("stopped",))
            break
        _, many, req_name, metas, resp_name, resp_size = msg
        buf = region("requests", req_name)
        feeds = [read(buf, m, copy=False) for m in metas]
        try:
            results = backend.infer_many(feeds) if many else [backend.infer(feeds[0])]
        except Exception as e:  # noqa: BLE001 - the whole call failed
            results = [e] * len(feeds)
        del feeds, buf
        errs = {i: _error_payload(r) for i, r in enumerate(results) if isinstance(r, BaseException)}
        ok = [({} if i in errs else r) for i, r in enumerate(results)]
        out_metas, writes, need = layout(ok)
        if need <= resp_size:
            write(region("results", resp_name), writes)
            conn.send(("done", out_metas, errs, None, need))
        else:  # too large for the region this time: inline, and the server grows the region for next time
            conn.send(("done", None, errs, ok, need))


# --------------------------------------------------------------------------- the server side
class ProcessInstance(Backend):
    """One model instance in its own worker process (see the module docstring)."""

    def __init__(self, backend_name: str, timeout_s: float = 0.0):
        super().__init__()
        self.backend_name = backend_name
        self.name = f"{backend_name} (process)"
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._up = False
        self._stopping = False
        self._stop_event = threading.Event()
        self._proc = None
        self._conn = None
        self._death_reason = ""
        self._backoff = _BACKOFF_FIRST
        self._requests = Region("requests")
        self._results = Region("results")
        self._supervisor: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def load(self, model_dir: str, version_dir: str, config) -> None:
        self._args = (self.backend_name, self.model_name, model_dir, version_dir, config.SerializeToString(),
                      self.instance_index, self.instance_count, self.allow_paths_outside,
                      logging.getLogger("tuili").getEffectiveLevel())
        self._requests.ensure(_MIN_REGION)
        self._results.ensure(_MIN_REGION)
        try:
            self._start()
        except BaseException:
            self._requests.close()
            self._results.close()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name=f"tuili-supervise-{self.model_name}-{self.instance_index}",
                                             daemon=True)
        self._supervisor.start()

    def _start(self) -> None:
        """Spawn a worker and wait until its model loaded; the load's error is raised here."""
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, *self._args), daemon=True,
                           name=f"tuili-worker-{self.model_name}-{self.instance_index}")
        proc.start()
        child.close()
        msg = None
        if conn in wait([conn, proc.sentinel]):
            try:
                msg = conn.recv()
            except EOFError:
                pass
        if msg is None or msg[0] != "ready":
            proc.join(_STOP_WAIT_S)
            conn.close()
            if msg is None:
                raise WorkerDiedError(f"model {self.model_name!r} instance {self.instance_index}: the worker process {_exit_text(proc)} "
                                      f"while loading the model; see the log above")
            raise _rebuild_error(self.model_name, msg[1])
        _, self.inputs, self.outputs, self.wants_request_list = msg
        log.info("model %s instance %d: worker process %d started (%s backend)", self.model_name, self.instance_index, proc.pid,
                 self.backend_name)
        with self._cond:
            if self._stopping:  # unloaded while this worker started: it never serves
                proc.kill()
                conn.close()
                return
            self._proc, self._conn, self._up = proc, conn, True
            self._cond.notify_all()

    def _supervise(self) -> None:
        """Wait for the worker to die; log it, restart it with backoff; until unload."""
        while True:
            with self._cond:
                proc = self._proc
            wait([proc.sentinel])
            proc.join()  # reap it: the exit code says how it died
            with self._cond:
                self._up = False
                reason, self._death_reason = self._death_reason, ""
                if self._stopping:
                    return
            self._conn.close()
            log.error("model %s instance %d: worker process %d %s%s; restarting it in %.1f s", self.model_name, self.instance_index,
                      proc.pid, _exit_text(proc), f" ({reason})" if reason else "", self._backoff)
            while not self._stop_event.wait(self._backoff):
                self._backoff = min(2 * self._backoff, _BACKOFF_MAX)
                try:
                    self._start()
                    break
                except Exception as e:  # noqa: BLE001 - logged, and tried again later
                    log.error("model %s instance %d: restarting the worker failed: %s; next try in %.1f s", self.model_name,
                              self.instance_index, e, self._backoff)
            else:
                return

    @property
    def ready(self) -> bool:
        """Whether the worker is up (False while it restarts)."""
        return self._up

    def wait_ready(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._up or self._stopping, timeout)

    def kill(self, reason: str) -> None:
        """Kill the worker (it restarts unless the instance is unloading); the call in flight fails."""
        with self._cond:
            proc = self._proc
            if proc is None or not proc.is_alive():
                return
            self._death_reason = reason
        proc.kill()

    def unload(self) -> None:
        with self._cond:
            self._stopping = True
            proc, conn, up = self._proc, self._conn, self._up
            self._cond.notify_all()
        self._stop_event.set()
        if proc is not None and up:
            try:
                conn.send(("stop",))
                if conn.poll(_STOP_WAIT_S):
                    conn.recv()
            except (OSError, EOFError):
                pass
            proc.join(_STOP_WAIT_S)
            if proc.is_alive():
                log.warning("model %s instance %d: the worker did not stop within %.0f s; killing it", self.model_name,
                            self.instance_index, _STOP_WAIT_S)
                proc.kill()
                proc.join()
            conn.close()
        if self._supervisor is not None:
            self._supervisor.join()
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

    def _call(self, many: bool, requests: list[dict[str, np.ndarray]]) -> list:
        with self._cond:
            proc, conn, up = self._proc, self._conn, self._up
        where = f"model {self.model_name!r} instance {self.instance_index}"
        if not up:
            raise WorkerDiedError(f"{where}: the worker process is restarting; retry the request")
        metas, writes, need = layout(requests)
        self._requests.ensure(need)
        write(self._requests.buf, writes)
        try:
            conn.send(("run", many, self._requests.name, metas, self._results.name, self._results.shm.size))
            # Only the worker holds the other end of the pipe: its death is an EOF here, no sentinel needed.
            if self.timeout_s and not select.select([conn.fileno()], [], [], self.timeout_s)[0]:
                self.kill(f"no answer within execution_timeout_ms={int(self.timeout_s * 1000)}")
                raise WorkerDiedError(f"{where}: the model did not answer within execution_timeout_ms="
                                      f"{int(self.timeout_s * 1000)}; its worker was killed and restarts")
            msg = conn.recv()
        except (OSError, EOFError):
            proc.join(1.0)
            raise WorkerDiedError(f"{where}: the worker process {_exit_text(proc)} while running the request; "
                                  f"it restarts, retry the request") from None
        _, out_metas, errs, inline, need = msg
        if inline is None:
            results = [read(self._results.buf, m, copy=True) for m in out_metas]
        else:
            results = inline
            self._results.ensure(need)
        for i, payload in errs.items():
            results[i] = _rebuild_error(self.model_name, payload)
        self._backoff = _BACKOFF_FIRST  # it works: the next crash restarts at once again
        return results


def _exit_text(proc) -> str:
    code = proc.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"

