"""The layering of DESIGN.md holds (import-linter contracts in pyproject.toml), and the check can fail."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(src: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_tree_keeps_the_layers():
    res = _lint_imports(ROOT / "src")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_forbidden_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "src" / "tuili", tmp_path / "tuili", ignore=shutil.ignore_patterns("__pycache__"))
    core = tmp_path / "tuili" / "ir" / "core.py"
    core.write_text(core.read_text() + "\nfrom tuili.serve import server  # noqa: E402\n")
    res = _lint_imports(tmp_path)
    assert res.returncode != 0
    assert "tuili.ir is not allowed to import tuili.serve" in res.stdout
