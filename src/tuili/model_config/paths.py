"""Repository confinement: a path a model's config (or a load request) names must stay inside the
model's directory.

Config fields such as ``default_model_filename`` and ``label_filename``, the python model file and
the external-data locations of an ONNX model are relative names; resolved with symlinks followed,
they must land inside the model directory. An absolute path, a ``../`` escape and a symlink that
points elsewhere are all refused with a :class:`ModelConfigError` naming the field and the path,
unless the server runs with ``--allow-paths-outside-repository`` (a trusted setup):
``allow_outside=True`` then skips the check.
"""
from __future__ import annotations

import os

from tuili.model_config.locate import ModelConfigError

#: What to do about a refused path, said once for every refusal.
OUTSIDE_HINT = ("keep every file of a model inside its directory (copy it there rather than linking "
                "out); a trusted setup may start the server with --allow-paths-outside-repository")


def is_inside(root: str, path: str) -> bool:
    """True if ``path`` (already resolved) is ``root`` (already resolved) or lies below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_inside(root: str | os.PathLike, name: str | os.PathLike, *, relative_to: str | os.PathLike | None = None,
                   field: str | None = None, source: str | None = None, allow_outside: bool = False) -> str:
    """The resolved path (symlinks followed) of ``name``, a path written relative to ``relative_to``
    (default ``root``), refused unless it stays inside ``root``.

    ``field`` and ``source`` locate the refusal (e.g. ``output[0].label_filename`` of
    ``.../config.pbtxt``). The file need not exist: only where it would be matters."""
    base = os.path.realpath(root)
    start = os.path.realpath(relative_to) if relative_to is not None else base
    path = os.path.realpath(os.path.join(start, name))
    if allow_outside or is_inside(base, path):
        return path
    raise ModelConfigError(f"path {os.fspath(name)!r} resolves to {path}, outside the model directory {base}; "
                           f"{OUTSIDE_HINT}", file=source, field=field)
