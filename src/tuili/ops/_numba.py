"""numba for the ops that compile loop kernels, if it can be imported.

``from tuili.ops._numba import HAVE_NUMBA, numba``: when HAVE_NUMBA is False, ``numba`` is None and
the op keeps its numpy path.
"""
from __future__ import annotations

try:  # numba is a project dependency; the numpy paths stay as the fallback
    import numba

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - environment without numba
    numba = None
    HAVE_NUMBA = False
