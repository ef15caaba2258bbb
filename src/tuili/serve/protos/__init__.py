"""Protocol buffers of tuili's server: the model configuration (config.pbtxt
schema) and the KServe V2 / Triton gRPC inference protocol.

Import the generated modules as ``from tuili.serve.protos import model_config_pb2,
grpc_service_pb2``. They are produced by ``python -m tuili.serve.protos.build``;
if they are missing or older than the .proto files, importing this package
compiles them (into the package directory, or into a user cache directory when
the package directory is read-only).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from tuili.serve.protos import _protoc as _build

log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tuili" / "protos"


def ensure_compiled() -> None:
    """Make the generated *_pb2 modules importable, compiling them if needed."""
    if not _build.is_stale():
        return
    if os.access(_build.PROTO_DIR, os.W_OK):
        log.info("generated protobuf modules missing or stale; compiling them now")
        _build.compile_protos()
        return
    cache = _cache_dir()
    if _build.is_stale(cache):
        log.info("package directory is read-only; compiling protobuf modules into %s", cache)
        _build.compile_protos(cache)
    # Generated modules import each other as tuili.serve.protos.X: let the
    # package find them in the cache directory too.
    if str(cache) not in __path__:
        __path__.append(str(cache))


ensure_compiled()
