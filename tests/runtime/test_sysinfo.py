"""`tuili info`: the facts it reports follow the CPU mask, and the CLI prints them as text or JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def _info(*args: str, mask: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, TUILI_CPU_MASK=mask)
    return subprocess.run([sys.executable, "-m", "tuili.cli", "info", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_json_facts_follow_the_mask():
    facts = json.loads(_info("--json", mask="avx512,amx,avx_vnni").stdout)
    c = facts["cpu"]
    assert not any(on for f, on in c["features"].items() if f.startswith(("avx512", "amx", "avx_vnni")))
    assert c["native_bf16"] is False and c["exact_int8_dot"] is None
    assert c["cores"] >= 1
    assert facts["torch"]["version"].startswith("2.13") and facts["numpy"]["version"]
    assert facts["onnxruntime"]["providers"]


def test_text_names_what_is_missing():
    out = _info(mask="avx512,amx,avx_vnni").stdout
    assert "bf16         not native" in out and "saturate at int16" in out and "masked" in out
    assert "onnxruntime  1." in out
