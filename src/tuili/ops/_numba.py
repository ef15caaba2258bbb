"""numba for the ops that compile loop kernels, imported only when one of them first runs.

``from tuili.ops._numba import HAVE_NUMBA, numba``, then ``@numba.njit(...)`` as with numba itself;
when HAVE_NUMBA is False, ``numba`` is None and the op keeps its numpy path.

Importing numba (and LLVM) costs ~56 MB of resident memory and seconds of start-up; a session whose
kernels never run a numba loop (a CNN on oneDNN) should pay neither. So ``numba.njit`` here returns
a ``LazyJit``: the first call imports numba, compiles every lazy kernel of the caller's module
(one kernel may call another: they must all be numba dispatchers by then) and rebinds the module's
names to them, so later calls go straight to numba.
"""
from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import Any

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_lock = threading.Lock()


class LazyJit:
    """A function to be compiled by ``numba.njit(**options)`` on its first call."""

    def __init__(self, fn: Callable, options: dict[str, Any]):
        self.fn, self.options = fn, options
        self.compiled: Any = None
        self.__name__, self.__doc__, self.__wrapped__ = fn.__name__, fn.__doc__, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            _compile_module(self.fn.__globals__)
        return self.compiled(*args, **kwargs)


def _compile_module(module_globals: dict) -> None:
    """Compile-wrap every LazyJit bound in a module and rebind its names to the numba dispatchers."""
    with _lock:
        import numba as real

        for name, value in list(module_globals.items()):
            if isinstance(value, LazyJit):
                if value.compiled is None:
                    value.compiled = real.njit(**value.options)(value.fn)
                module_globals[name] = value.compiled


class _LazyNumba:
    """Stands for the numba module: ``njit`` defers, anything else imports numba and delegates."""

    def njit(self, *args: Any, **options: Any) -> Any:
        if args and callable(args[0]):  # bare @numba.njit
            return LazyJit(args[0], options)
        return lambda fn: LazyJit(fn, options)

    def __getattr__(self, name: str) -> Any:
        import numba as real

        return getattr(real, name)


numba: Any = _LazyNumba() if HAVE_NUMBA else None
