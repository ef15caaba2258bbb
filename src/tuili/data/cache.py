"""Where generated data sets live on disk, and how they get there safely.

The directory is ``$TUILI_CACHE_DIR`` if set, else ``~/.cache/tuili``. Files are written to a
temporary name and renamed into place, so two processes generating the same set at once
(``pytest -n 2``) never read a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

ENV_VAR = "TUILI_CACHE_DIR"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$TUILI_CACHE_DIR``, else ``~/.cache/tuili``."""
    if override is not None:
        return Path(override)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "tuili"


def key(params: dict) -> str:
    """A short stable digest of JSON-serialisable generation parameters."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (compressed) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
