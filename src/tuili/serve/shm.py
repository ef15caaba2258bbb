"""Triton's system shared-memory extension: the regions clients registered, and the tensors of a
request that live in them.

A client creates a POSIX shared-memory object (``tritonclient.utils.shared_memory``), registers a
window of it as a named region (key, offset, byte_size), then names the region in a request:
an input's parameters ``shared_memory_region`` / ``shared_memory_byte_size`` /
``shared_memory_offset`` say where its data is, a requested output's the same where its result
goes (the response then carries no data for it).

The server maps the object itself (``shm_open`` + ``mmap``), not through
``multiprocessing.shared_memory.SharedMemory``: attaching one registers it with multiprocessing's
resource tracker, which unlinks it (the client's object) when the server exits.

An input is copied out when the request arrives, an output copied in when the answer is ready:
small tensors on the event loop, larger ones (``OFF_LOOP_BYTES`` in all) in a worker thread, with
numpy copies that release the GIL, so a 100 MB tensor never stalls the other clients. A region's
lock keeps a copy and an unmap apart: unregistering waits for a copy in progress and then unmaps;
a request still holding the region fails with a clear error and never touches freed memory.
Copies, not views: a client may shrink or rewrite its object at any time, and a model reading a
view of a shrunken object would die of SIGBUS.
"""
from __future__ import annotations

import _posixshmem  # the shm_open that multiprocessing.shared_memory uses, without its resource tracker
import math
import mmap
import os
import stat
import threading
from dataclasses import dataclass

import numpy as np

from tuili import dtypes
from tuili.errors import InvalidInputError
from tuili.serve.errors import clip
from tuili.serve.types import InferOutput, InferRequest, deserialize_bytes_tensor, serialize_bytes_tensor

REGION, BYTE_SIZE, OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"
#: The most regions registered at once (each is a mapping; the kernel caps a process's mappings).
MAX_REGIONS = 1024
#: A request whose tensors in shared memory hold more bytes than this has them copied in a worker
#: thread, not on the event loop (below it the thread hop costs more than the copy).
OFF_LOOP_BYTES = 1 << 20
#: CUDA shared memory needs a GPU; what both protocols answer when asked for it.
NO_GPU = ("CUDA shared memory is not available: this server has no GPU; "
          "use system shared memory (v2/systemsharedmemory, tritonclient.utils.shared_memory)")


def _q(name: str) -> str:
    return repr(clip(name))


class Region:
    """One registered window ``[offset, offset + byte_size)`` of a shared-memory object, mapped."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int):
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._lock = threading.Lock()  # a copy in a worker thread and an unmap never overlap
        try:
            self._fd = _posixshmem.shm_open("/" + key.lstrip("/"), os.O_RDWR, mode=0)
        except FileNotFoundError:
            raise InvalidInputError(f"Unable to open shared memory region: no shared-memory object with key {_q(key)}; "
                                    f"create it (shared_memory.create_shared_memory_region) before registering {_q(name)}") from None
        except OSError as e:
            raise InvalidInputError(f"Unable to open shared memory region: key {_q(key)}: {e.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(self._fd).st_mode):
                raise InvalidInputError(f"key {_q(key)} of region {_q(name)} is not a shared-memory object")
            self._check_object()
            self._start = offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be page-aligned
            self._map: mmap.mmap | None = mmap.mmap(self._fd, self._start + byte_size, offset=offset - self._start)
        except (OSError, ValueError) as e:
            os.close(self._fd)
            raise InvalidInputError(f"Unable to map shared memory region {_q(name)} (key {_q(key)}): {e}") from None
        except BaseException:
            os.close(self._fd)
            raise

    def _check_object(self) -> None:
        """The object still holds the whole window: touching a page past its end is SIGBUS, which
        would kill the server, so a client that shrank it gets an error instead."""
        size = os.fstat(self._fd).st_size
        if self.offset + self.byte_size > size:
            raise InvalidInputError(
                f"region {_q(self.name)}: offset {self.offset} + byte_size {self.byte_size} runs past the end of the "
                f"shared-memory object {_q(self.key)} ({size} bytes); register a window inside it")

    @property
    def registered(self) -> bool:
        return self._map is not None

    def close(self) -> None:
        with self._lock:  # waits for a copy in progress
            if self._map is not None:
                self._map.close()  # never raises BufferError: no view of it outlives a read or a write
                self._map = None
                os.close(self._fd)

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def check(self, offset: int, size: int, where: str) -> None:
        """``size`` bytes at ``offset`` lie inside the region (``where``: the tensor, for the message)."""
        if offset + size > self.byte_size:
            raise InvalidInputError(f"{where}: {OFFSET} {offset} + {BYTE_SIZE} {size} runs past the end of shared "
                                    f"memory region {_q(self.name)} ({self.byte_size} bytes)")

    def _window(self, offset: int, size: int, where: str) -> np.ndarray:
        """A uint8 view of ``size`` bytes at ``offset``; call with the lock held and drop it before letting go."""
        if self._map is None:
            raise InvalidInputError(f"{where}: shared memory region {_q(self.name)} was unregistered while the request "
                                    f"ran; the tensor was not copied")
        self._check_object()
        return np.frombuffer(self._map, np.uint8, size, self._start + offset)

    def read(self, offset: int, size: int, where: str = "tensor") -> np.ndarray:
        """A copy (uint8) of ``size`` bytes at ``offset`` (numpy's copy runs without the GIL)."""
        with self._lock:
            view = self._window(offset, size, where)
            out = view.copy()
            del view
        return out

    def write(self, offset: int, data, where: str = "tensor") -> None:
        with self._lock:
            view = self._window(offset, len(data), where)
            view[:] = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
            del view


@dataclass(slots=True)
class _Destination:
    region: Region
    offset: int
    size: int


def _placement(params: dict, where: str) -> tuple[str, int, int] | None:
    """(region, byte size, offset) a tensor's parameters name; None when it is not in shared memory."""
    if REGION not in params:
        stray = [k for k in (BYTE_SIZE, OFFSET) if k in params]
        if stray:
            raise InvalidInputError(f"{where} has parameter {stray[0]!r} but no {REGION!r}; name the region or drop it")
        return None
    if BYTE_SIZE not in params:
        raise InvalidInputError(f"{where} names shared memory region {_q(params[REGION])} but no {BYTE_SIZE!r}")
    return params[REGION], params[BYTE_SIZE], params.get(OFFSET, 0)


class SharedMemoryRegistry:
    """The system shared-memory regions registered with the server, by name."""

    def __init__(self):
        self._regions: dict[str, Region] = {}

    # ------------------------------------------------------------------ the extension's API
    def register(self, name, key, offset, byte_size) -> None:
        for field, v in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InvalidInputError(f"{field!r} of the register request must be a non-negative integer, got {clip(repr(v))}")
        if not isinstance(name, str) or not name:
            raise InvalidInputError("the register request needs a region name")
        if not isinstance(key, str) or not 0 < len(key.lstrip("/")) <= 255 or "/" in key.lstrip("/") \
                or "\0" in key or key.lstrip("/") in (".", ".."):
            raise InvalidInputError(f"'key' of region {_q(name)} must name a shared-memory object: an optional '/' and up "
                                    f"to 255 characters without '/', got {clip(repr(key))}")
        if byte_size == 0:
            raise InvalidInputError(f"'byte_size' of region {_q(name)} must be positive")
        if name in self._regions:
            raise InvalidInputError(f"shared memory region {_q(name)} already in manager; unregister it first")
        if len(self._regions) >= MAX_REGIONS:
            raise InvalidInputError(f"{MAX_REGIONS} shared memory regions are registered, the most the server keeps; "
                                    f"unregister some first")
        self._regions[name] = Region(name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unmap region ``name``, or every region when ``name`` is empty; an unknown name is no error
        (as in Triton: either way the region is not registered afterwards)."""
        for n in [name] if name else list(self._regions):
            region = self._regions.pop(n, None)
            if region is not None:
                region.close()

    def status(self, name: str = "") -> list[dict]:
        if name:
            return [self.get(name, "status request").status()]
        return [self._regions[n].status() for n in sorted(self._regions)]

    def get(self, name: str, where: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise InvalidInputError(f"Unable to find shared memory region: {_q(name)} ({where}); register it first "
                                    f"(v2/systemsharedmemory/region/<name>/register)")
        return region

    # ------------------------------------------------------------------ the tensors of a request
    @staticmethod
    def placed_bytes(tensors) -> int:
        """How many bytes of these inputs or requested outputs the parameters place in shared memory
        (unchecked: to decide where to copy them)."""
        total = 0
        for t in tensors or ():
            size = t.parameters.get(BYTE_SIZE) if REGION in t.parameters else None
            if isinstance(size, int) and not isinstance(size, bool):
                total += max(0, size)
        return total

    def read_inputs(self, req: InferRequest) -> None:
        """Fill the data of the request's inputs that live in shared memory (copied out of the region;
        blocking: called from a worker thread when the inputs are large, ``placed_bytes``)."""
        for inp in req.inputs:
            where = f"input {_q(inp.name)}"
            placed = _placement(inp.parameters, where)
            if placed is None:
                continue
            name, size, offset = placed
            region = self.get(name, where)
            region.check(offset, size, where)
            count = math.prod(inp.shape)
            if inp.datatype == "BYTES":
                try:
                    inp.data = deserialize_bytes_tensor(region.read(offset, size, where).tobytes(), count).reshape(inp.shape)
                except InvalidInputError as e:
                    raise InvalidInputError(f"{where} in shared memory region {_q(name)}: {e}") from None
                continue
            dt = dtypes.from_v2(inp.datatype)
            want = count * dt.bits // 8
            if size != want:
                raise InvalidInputError(f"{where}: {BYTE_SIZE} is {size} but shape {inp.shape} of {inp.datatype} "
                                        f"needs {want} bytes")
            inp.data = region.read(offset, size, where).view(dt.numpy).reshape(inp.shape)

    def destinations(self, req: InferRequest) -> dict[str, _Destination]:
        """The requested outputs to write into shared memory, by name, checked before the model runs."""
        found = {}
        for o in req.outputs or ():
            where = f"output {_q(o.name)}"
            placed = _placement(o.parameters, where)
            if placed is not None:
                name, size, offset = placed
                region = self.get(name, where)
                region.check(offset, size, where)
                found[o.name] = _Destination(region, offset, size)
        return found

    @staticmethod
    def write_outputs(destinations: dict[str, _Destination], outputs: list[InferOutput]) -> None:
        """Copy the outputs that go to shared memory into their regions; their parameters then say
        where they are, and the adapters send no data for them."""
        staged = []
        for out in outputs:
            dest = destinations.get(out.name)
            if dest is None:
                continue
            where = f"output {_q(out.name)}"
            if not dest.region.registered:
                raise InvalidInputError(f"{where}: shared memory region {_q(dest.region.name)} was unregistered while "
                                        f"the request ran; the output was not written")
            if out.datatype == "BYTES":
                data = serialize_bytes_tensor(out.data)
            else:
                data = np.ascontiguousarray(out.data).reshape(-1).view(np.uint8)
            if len(data) > dest.size:
                raise InvalidInputError(f"{where} holds {len(data)} bytes ({out.datatype}, shape {out.shape}) but its "
                                        f"{BYTE_SIZE} is {dest.size}; give it at least {len(data)}")
            staged.append((out, dest, data))
        for out, dest, data in staged:  # all checked first: a failing request writes nothing
            dest.region.write(dest.offset, data, f"output {_q(out.name)}")
            out.parameters = {REGION: dest.region.name, BYTE_SIZE: len(data)}
            if dest.offset:
                out.parameters[OFFSET] = dest.offset


def in_shared_memory(params: dict) -> bool:
    """Whether a tensor's parameters place it in a shared-memory region (then it carries no data)."""
    return REGION in params
