"""Compile tuili's .proto files into Python modules (protoc from grpcio-tools).

The build step is ``python -m tuili.serve.protos.build`` (see build.py); the
package ``tuili.serve.protos`` also compiles on first import when the generated
modules are missing or stale, so a plain ``pip install`` works without it.

The include root is the directory that holds the ``tuili`` package, so the
generated modules import each other as ``tuili.serve.protos.<name>_pb2`` and
register under unique file names (``tuili/serve/protos/model_config.proto``)
that never clash with the protos bundled in tritonclient.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from tuili.errors import ConfigError

log = logging.getLogger(__name__)

PROTO_DIR = Path(__file__).resolve().parent
# src/ (or site-packages/): the directory that contains the `tuili` package.
INCLUDE_ROOT = PROTO_DIR.parents[2]
PACKAGE_PATH = "tuili/serve/protos"
PROTO_FILES = ("model_config.proto", "grpc_service.proto")


def generated_name(proto: str) -> str:
    return proto[: -len(".proto")] + "_pb2.py"


def is_stale(out_dir: Path = PROTO_DIR) -> bool:
    """True if any generated module is missing or older than its .proto file."""
    for proto in PROTO_FILES:
        gen = out_dir / generated_name(proto)
        if not gen.exists() or gen.stat().st_mtime < (PROTO_DIR / proto).stat().st_mtime:
            return True
    return False


def compile_protos(out_dir: Path | str | None = None) -> list[Path]:
    """Run protoc on every .proto of this package; return the generated files.

    ``out_dir`` defaults to this package's directory. Files are generated in a
    temporary directory and moved into place atomically, so concurrent
    compiles (e.g. pytest-xdist workers) never see half-written modules.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "cannot compile tuili's protos: grpcio-tools is not installed; "
            "install it (`pip install grpcio-tools`) or run `python -m tuili.serve.protos.build` "
            "where it is available"
        ) from exc
    import importlib.resources

    out = Path(out_dir) if out_dir is not None else PROTO_DIR
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(prefix="tuili-protoc-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{INCLUDE_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *[f"{PACKAGE_PATH}/{p}" for p in PROTO_FILES],
        ]
        code = protoc.main(args)
        if code != 0:
            raise ConfigError(
                f"protoc failed (exit {code}) compiling {', '.join(PROTO_FILES)} in {PROTO_DIR}; "
                "run `python -m tuili.serve.protos.build` to see protoc's message"
            )
        written = []
        for proto in PROTO_FILES:
            for name in (generated_name(proto), generated_name(proto) + "i"):
                src = Path(tmp) / PACKAGE_PATH / name
                dst = out / name
                staged = out / f".{name}.{os.getpid()}.tmp"
                shutil.copyfile(src, staged)
                os.replace(staged, dst)
                written.append(dst)
    log.info("compiled %s into %s", ", ".join(PROTO_FILES), out)
    return written
