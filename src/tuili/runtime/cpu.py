"""The CPU at hand, found once: model name, core count and the ISA features kernels choose by.

Machines here range from AMD EPYC with AVX2 only to Intel Xeon with AVX-512 VNNI, BF16 and AMX, so
nothing assumes a feature: code asks :func:`has`. ``TUILI_CPU_MASK`` hides features, to run tuili
(and its test suite) as if on a smaller CPU: a comma-separated list of flag prefixes, e.g.
``TUILI_CPU_MASK=avx512,amx`` looks like an AVX2-only machine and ``TUILI_CPU_MASK=avx512_vnni,avx_vnni``
like one without VNNI. Flags use the Linux /proc/cpuinfo names.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

MASK_ENV = "TUILI_CPU_MASK"

#: the features tuili's kernels and tests branch on, in the order `describe` prints them
KNOWN = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
         "amx_tile", "amx_bf16", "amx_int8")
#: features that sum u8*s8 products in int32 without the int16 saturation of vpmaddubsw
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: frozenset[str]  # after the mask
    masked: frozenset[str]  # present on the machine but hidden by TUILI_CPU_MASK

    def has(self, feature: str) -> bool:
        return feature in self.flags

    def describe(self) -> str:
        """One line for benchmark tables: model, cores and the known features present."""
        feats = [f for f in KNOWN if f in self.flags] or ["none of " + "/".join(KNOWN[:3])]
        line = f"{self.model}, {self.cores} cores, {' '.join(feats)}"
        if self.masked:
            line += f" (masked by {MASK_ENV}: {' '.join(sorted(self.masked & set(KNOWN)) or sorted(self.masked))})"
        return line


def _read_cpuinfo() -> tuple[str, set[str]]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass  # not Linux: no features known, every kernel takes its portable path
    return model, flags


def _apply_mask(flags: set[str], mask: str) -> tuple[frozenset[str], frozenset[str]]:
    prefixes = [p.strip().lower() for p in mask.split(",") if p.strip()]
    hidden = {f for f in flags if any(f.startswith(p) for p in prefixes)}
    return frozenset(flags - hidden), frozenset(hidden)


@functools.cache
def info() -> CpuInfo:
    model, flags = _read_cpuinfo()
    kept, hidden = _apply_mask(flags, os.environ.get(MASK_ENV, ""))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(model, cores, kept, hidden)


def cache_file(name: str) -> Path:
    """Where measurements made on this machine are kept: ``$TUILI_CACHE_DIR/name`` (default
    ~/.cache/tuili); callers key their entries by the CPU."""
    root = os.environ.get("TUILI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tuili")
    return Path(root) / name


def has(feature: str) -> bool:
    """True if the CPU has ``feature`` (a /proc/cpuinfo flag name) and it is not masked."""
    return info().has(feature)


def exact_int8_dot() -> str | None:
    """The feature that gives exact int32 sums of u8*s8 products (VNNI, AMX), or None: then
    vpmaddubsw-based kernels (onnxruntime's u8s8 on AVX2) saturate pairs of products at int16."""
    return next((f for f in INT8_DOT if has(f)), None)
