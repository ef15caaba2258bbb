"""CPU features are read from the machine and can be masked to exercise the fallbacks everywhere."""
from __future__ import annotations

import os
import subprocess
import sys

from tuili.runtime import cpu
from tuili.runtime.cpu import _apply_mask


def test_flags_come_from_the_machine():
    info = cpu.info()
    assert info.cores >= 1 and info.model
    if os.path.exists("/proc/cpuinfo"):
        text = open("/proc/cpuinfo").read()
        for flag in ("sse2", "avx2"):
            assert cpu.has(flag) == (f" {flag}" in text and flag not in info.masked)
    assert info.model in info.describe()


def test_mask_hides_by_prefix():
    flags = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "fma"}
    kept, hidden = _apply_mask(flags, "avx512, AMX")
    assert kept == {"avx2", "fma"}
    assert hidden == {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}
    assert _apply_mask(flags, "")[0] == frozenset(flags)


def test_mask_reaches_a_fresh_process():
    code = "from tuili.runtime import cpu; print(cpu.exact_int8_dot(), cpu.has('avx512f'), cpu.info().describe())"
    env = dict(os.environ, TUILI_CPU_MASK="avx512,avx_vnni,amx")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("None False ")
