"""Build step: ``python -m tuili.serve.protos.build`` compiles the .proto files of
this package into ``model_config_pb2.py`` / ``grpc_service_pb2.py`` (plus .pyi
stubs) next to them. Always recompiles; importing the package only compiles
when the generated modules are missing or older than the .proto files.
"""
from __future__ import annotations

import logging
import sys

from tuili.serve.protos._protoc import compile_protos, is_stale  # noqa: F401  (re-exported)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in compile_protos():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
