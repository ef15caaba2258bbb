"""Kernel registry: one function per (domain, op type, opset range).

A kernel is a plain function over numpy arrays::

    @register("Conv", since=11)
    def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1,
             kernel_shape=None, pads=None, strides=None):
        ...
        return y                      # one array, or a tuple for several outputs

* Inputs arrive positionally in ONNX order; an omitted optional input is ``None``.
* Attributes arrive as keyword arguments, already decoded: int, float, str,
  list[int], list[float], list[str], np.ndarray (TENSOR), Graph (GRAPH),
  list[Graph]. Keyword defaults are the ONNX defaults.
* A kernel that declares ``ctx`` as its first parameter gets a ``KernelContext``
  (opset, node name, number of outputs, subgraph runner for If/Loop/Scan).
* Temporaries a kernel never returns (padded copies, im2col matrices) come from ``scratch()``:
  the runtime binds a reusing allocator while it runs a plan; called directly, a kernel gets
  fresh arrays.
* A kernel may also have a *preparer* (``@prepares(kernel)``), called once at plan time with what is
  known then (``NodeInfo``: constant inputs, static shapes, attributes); it returns a specialised
  callable with the kernel's calling convention (weights pre-packed, a library chosen for the
  shape and CPU) or None to keep the generic kernel.
* ``since`` is the first opset the implementation is valid for; it holds until
  the next registration of the same op. Register a new range only where the
  op's semantics changed.
"""
from __future__ import annotations

import bisect
import difflib
import inspect
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuili.errors import KernelError, UnsupportedOpError

ONNX_DOMAIN = ""
ONNX_ML_DOMAIN = "ai.onnx.ml"
MS_DOMAIN = "com.microsoft"


@dataclass
class KernelContext:
    """What a kernel may need beyond its inputs and attributes."""

    op_type: str
    opset: int
    node_name: str = ""
    num_outputs: int = 1
    # run_subgraph(graph, inputs: list in the body's input order, or dict by name) -> list of outputs;
    # the body sees the outer-scope values it reads
    run_subgraph: Callable[..., list] | None = None
    # anything else a caller hands its kernels (the runtime passes subgraphs through run_subgraph)
    extra: dict = field(default_factory=dict)


class Scratch:
    """Where kernels get temporaries they never return to the caller.

    ``buffer(key, shape, dtype) -> (array, fresh)``: an uninitialized array, valid until the kernel
    returns. ``fresh`` is False when the array is one this thread got before under the same key,
    shape and dtype, still holding what the kernel wrote then (a padded copy's zero border need not
    be written again). This base allocates every time; runtime.memory implements the reusing one.
    """

    def buffer(self, key: Hashable, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, bool]:
        return np.empty(shape, dtype=dtype), True


@dataclass(frozen=True)
class NodeInfo:
    """What is known about a node at plan time, for a kernel's preparer."""

    op_type: str
    opset: int
    node_name: str
    given: tuple[bool, ...]                 # per input: False for an omitted optional input
    consts: tuple[Any, ...]                 # per input: its constant value, or None (computed at run time)
    shapes: tuple[tuple | None, ...]        # per input: static shape (int or None per dim), None unknown
    dtypes: tuple[np.dtype | None, ...]     # per input: numpy dtype, None unknown
    attrs: dict[str, Any]

    def float32_or_unknown(self, i: int) -> bool:
        """Input ``i`` is float32 or of a type unknown at plan time (``dtype in (None, float32)``
        would be wrong: numpy compares ``None`` equal to float64)."""
        dt = self.dtypes[i] if len(self.dtypes) > i else None
        return dt is None or dt == np.float32


#: kernel function -> its preparer(NodeInfo) -> callable | None
_PREPARERS: dict[Callable, Callable[[NodeInfo], Callable | None]] = {}


def prepares(kernel_fn: Callable) -> Callable:
    """Decorator registering ``fn(info: NodeInfo) -> callable | None`` as ``kernel_fn``'s preparer."""

    def deco(fn: Callable[[NodeInfo], Callable | None]) -> Callable:
        _PREPARERS[kernel_fn] = fn
        return fn

    return deco


def absorbing(*positions: int) -> Callable[[Callable], Callable]:
    """Marks a prepared kernel as holding its own (packed) copy of the constant inputs at
    ``positions``: the planner then keeps only zero-memory stand-ins of them (same shape and dtype),
    so the kernel must never compute with those arguments (see ``unplanned``)."""

    def deco(fn: Callable) -> Callable:
        fn.absorbs = positions  # type: ignore[attr-defined]
        return fn

    return deco


def unplanned(generic: Callable, op: str, x: np.ndarray, *args: Any, **attrs: Any) -> Any:
    """What an absorbing kernel does with an input it was not planned for: the generic kernel
    explains why the input is wrong; should it accept it, the stand-in constants would give a wrong
    result, so the input is refused."""
    generic(x, *args, **attrs)
    raise KernelError(f"{op}: an input of dtype {x.dtype} and shape {list(x.shape)} is not what this node's "
                      f"kernel was planned for (its weights were packed at load for another input kind); "
                      f"feed the dtype and rank the model declares")


def preparer(kernel_fn: Callable) -> Callable[[NodeInfo], Callable | None] | None:
    """The preparer of a kernel function, or None."""
    return _PREPARERS.get(kernel_fn)


_FRESH = Scratch()
_bound = threading.local()


def scratch() -> Scratch:
    """The scratch allocator bound to this thread (by the runtime while it runs a plan)."""
    return getattr(_bound, "scratch", _FRESH)


def bind_scratch(allocator: Scratch) -> Scratch:
    """Bind ``allocator`` to this thread; returns the one bound before, to restore afterwards."""
    previous = getattr(_bound, "scratch", _FRESH)
    _bound.scratch = allocator
    return previous


@dataclass(frozen=True)
class Kernel:
    op_type: str
    domain: str
    since: int
    fn: Callable[..., Any]
    wants_ctx: bool

    @property
    def name(self) -> str:
        return f"{self.domain or 'ai.onnx'}::{self.op_type}-{self.since}"


# (domain, op_type) -> sorted list of (since, Kernel)
_KERNELS: dict[tuple[str, str], list[tuple[int, Kernel]]] = {}


def register(op_type: str, *, domain: str = ONNX_DOMAIN, since: int = 1) -> Callable:
    """Decorator registering ``fn`` as the kernel for ``op_type`` from opset ``since`` on."""

    def deco(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters)
        kernel = Kernel(op_type, domain, since, fn, wants_ctx=bool(params) and params[0] == "ctx")
        entries = _KERNELS.setdefault((domain, op_type), [])
        if any(s == since for s, _ in entries):
            raise ValueError(f"kernel {kernel.name} registered twice")
        bisect.insort(entries, (since, kernel), key=lambda e: e[0])
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every kernel module.
    import tuili.ops  # noqa: F401


def lookup(op_type: str, domain: str = ONNX_DOMAIN, opset: int = 10**6) -> Kernel | None:
    """The kernel valid for ``opset``, or None."""
    _ensure_loaded()
    domain = "" if domain == "ai.onnx" else domain
    entries = _KERNELS.get((domain, op_type))
    if not entries:
        return None
    i = bisect.bisect_right([s for s, _ in entries], opset)
    return entries[i - 1][1] if i else None


def get_kernel(op_type: str, domain: str = ONNX_DOMAIN, opset: int = 10**6, node_name: str = "") -> Kernel:
    """Like ``lookup`` but raises a clear UnsupportedOpError naming what exists nearby."""
    kernel = lookup(op_type, domain, opset)
    if kernel is not None:
        return kernel
    domain = "" if domain == "ai.onnx" else domain
    where = f" (node {node_name!r})" if node_name else ""
    entries = _KERNELS.get((domain, op_type))
    if entries:
        raise UnsupportedOpError(
            f"op {op_type} (domain {domain or 'ai.onnx'!r}) at opset {opset}{where} is not supported: "
            f"tuili implements it from opset {entries[0][0]} on; re-export the model with a newer opset"
        )
    near = difflib.get_close_matches(op_type, [op for d, op in _KERNELS if d == domain], n=5, cutoff=0.5)
    hint = f"; similar supported ops: {', '.join(near)}" if near else ""
    raise UnsupportedOpError(
        f"op {op_type} (domain {domain or 'ai.onnx'!r}, opset {opset}){where} has no tuili kernel{hint}. "
        f"`tuili ops` lists every supported op; replace the op or export the model without it"
    )


def supported_ops() -> dict[str, list[tuple[str, int]]]:
    """domain -> sorted [(op_type, first opset)] of everything registered."""
    _ensure_loaded()
    out: dict[str, list[tuple[str, int]]] = {}
    for (domain, op), entries in _KERNELS.items():
        out.setdefault(domain or "ai.onnx", []).append((op, entries[0][0]))
    return {d: sorted(v) for d, v in sorted(out.items())}
