"""Per-shape kernel choice by measurement: where two kernels can run a node, time both at the shapes
it really runs at and keep the faster, remembered on disk per CPU.

A node is tunable when its preparer gave a specialised kernel (torch/oneDNN, ``ops._torch``) that
does not hold its own copy of a constant (``absorbs``): the generic numpy kernel can then run it too,
and which is faster depends on the shapes (torch's per-call overhead against numpy's single thread;
a 16x16 MatMul is faster in numpy, a 128x64x128 one in torch). The planner wraps such a node in a
``Tunable``. At each new input signature (shapes and dtypes of its inputs) the ``Tunable`` looks
its choice up: in memory, then in the on-disk ``Choices`` (``$TUILI_CACHE_DIR/tuning.json``, keyed
by op, domain, attributes, input signature, CPU model and features, and thread count). Without an
entry it runs the specialised kernel, unless the session tunes (``InferenceSession(...,
tune=True)``, ``tuili tune model.onnx``): then it times each candidate on the run's real inputs
(kernels never modify their inputs), keeps the fastest and writes it to the file.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tuili.runtime import cpu

log = logging.getLogger(__name__)

GENERIC = "numpy"
#: timed calls per candidate (after one warm-up call); the median decides
REPEATS = 5


class Choices:
    """The on-disk record of measured choices, read once per process and shared by every session."""

    def __init__(self, path: Path | None = None):
        self.path = path or cpu.cache_file("tuning.json")
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text()) if self.path.is_file() else {}
            except (OSError, ValueError) as e:
                log.warning("kernel choices in %s unreadable (%s): measuring again", self.path, e)
                self._entries = {}
        return self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._load().get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        with self._lock:
            entries = self._load()
            entries[key] = entry
            try:  # written whole to a temporary file, then renamed: readers never see half a file
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
            except OSError as e:
                log.warning("could not record a kernel choice in %s: %s", self.path, e)


_SHARED: Choices | None = None


def shared_choices() -> Choices:
    global _SHARED
    if _SHARED is None:
        _SHARED = Choices()
    return _SHARED


def signature(args: tuple) -> tuple:
    """What a choice depends on: each input's shape and dtype (None for an omitted input)."""
    return tuple((a.shape, a.dtype.str) if isinstance(a, np.ndarray) else None for a in args)


class Tunable:
    """A node's kernel chosen per input signature between ``candidates`` (name -> kernel with the
    node's calling convention); ``default`` runs where nothing was measured and the session does not
    tune. ``where`` is the node's key prefix (op, domain, attributes), ``threads()`` the thread count
    a run uses."""

    def __init__(self, label: str, where: str, candidates: dict[str, Callable], default: str, tune: bool,
                 threads: Callable[[], int], choices: Choices | None = None):
        self.label, self.where, self.candidates, self.default = label, where, candidates, default
        self.tune, self.threads = tune, threads
        self.choices = choices or shared_choices()
        self.chosen: dict[tuple, Callable] = {}
        self.measured: dict[tuple, dict[str, Any]] = {}  # this session's measurements (tuili tune reports them)
        self._lock = threading.Lock()
        self.__name__ = f"tunable({'|'.join(candidates)})"

    def __call__(self, *args: Any, **attrs: Any) -> Any:
        sig = signature(args)
        fn = self.chosen.get(sig)
        if fn is None:
            fn = self._choose(sig, args, attrs)
        return fn(*args, **attrs)

    def key(self, sig: tuple) -> str:
        info = cpu.info()
        return f"{self.where} | {sig} | {info.model} {sorted(info.flags & set(cpu.KNOWN))} | threads={self.threads()}"

    def _choose(self, sig: tuple, args: tuple, attrs: dict) -> Callable:
        with self._lock:
            if sig in self.chosen:
                return self.chosen[sig]
            key = self.key(sig)
            entry = self.choices.get(key)
            if entry is None and self.tune:
                entry = self._measure(args, attrs)
                self.choices.put(key, entry)
                log.debug("%s %s: %s", self.label, sig, entry)
            if entry is not None:
                self.measured[sig] = entry
            name = entry["chosen"] if entry is not None and entry.get("chosen") in self.candidates else self.default
            self.chosen[sig] = self.candidates[name]
            return self.chosen[sig]

    def _measure(self, args: tuple, attrs: dict) -> dict[str, Any]:
        seconds: dict[str, float] = {}
        for name, fn in self.candidates.items():
            try:
                fn(*args, **attrs)  # warm-up: first-call costs (oneDNN primitive creation) are not the kernel's speed
                times = []
                for _ in range(REPEATS):
                    t0 = time.perf_counter()
                    fn(*args, **attrs)
                    times.append(time.perf_counter() - t0)
                seconds[name] = float(np.median(times))
            except Exception as e:  # noqa: BLE001 - a candidate that fails here is not chosen
                log.debug("%s: candidate %s failed while tuning: %s", self.label, name, e)
        chosen = min(seconds, key=seconds.__getitem__) if seconds else self.default
        return {"chosen": chosen, "seconds": seconds}
