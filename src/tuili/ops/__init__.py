"""Kernels, one module per op family. Importing this package registers them all."""
from __future__ import annotations

import importlib
import pkgutil

from tuili.ops.registry import Kernel, KernelContext, get_kernel, lookup, register, supported_ops

__all__ = ["Kernel", "KernelContext", "get_kernel", "lookup", "register", "supported_ops"]

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "registry":
        importlib.import_module(f"{__name__}.{_mod.name}")
