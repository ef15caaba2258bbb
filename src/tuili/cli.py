"""The `tuili` command. Each verb lives next to the code it drives, in a
``<package>/cli.py`` module exposing ``add_parser(subparsers)``; that module
must import heavy dependencies (torch, grpc, ...) inside its handler, not at
top level, so `tuili --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tuili.errors import TuiliError

# Modules contributing verbs, in help order.
VERB_MODULES = [
    "tuili.zoo.cli",
    "tuili.nas.cli",
    "tuili.passes.cli",
    "tuili.compress.cli",
    "tuili.compress.prune.cli",
    "tuili.compress.deep.cli",
    "tuili.compress.distill.cli",
    "tuili.compress.binary.cli",
    "tuili.compress.quant.cli",
    "tuili.runtime.cli",
    "tuili.serve.cli",
    "tuili.bench.cli",
    "tuili.deploy.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuili", description="tuili (推理): optimize, compress and serve ONNX models")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                continue  # verb (or its package) not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TuiliError as e:
        print(f"tuili {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
