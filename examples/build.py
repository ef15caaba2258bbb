"""Generate the model files of the example repository (its configs and python models are committed).

    python -m examples.build examples/model_repository           # idempotent; fast when built
    python -m examples.build examples/model_repository --force   # rebuild everything

a digits CNN trained here on scikit-learn's digits (tuili.zoo; the tuili-backend copy shares the
file), ResNet-18 and BERT-small exported from tuili.zoo with random weights, and the (empty) version
directory of the image -> label ensemble.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

log = logging.getLogger("examples.build")

DEFAULT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_repository")


def _done(path: str) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0


def _copy_if_changed(src: str, dst: str) -> bool:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src, "rb") as f:
        new = f.read()
    if os.path.exists(dst):
        with open(dst, "rb") as f:
            if f.read() == new:
                return False
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(new)
    os.replace(tmp, dst)
    return True


def build(root: str, *, epochs: int | None = None, force: bool = False) -> dict[str, str]:
    """Generate every model file of the example repository under ``root``. Returns {model: status}."""
    from tuili import zoo

    status = {}
    t0 = time.perf_counter()
    # 1. digits CNN, trained here (the tuili-engine copy shares the file).
    digits = os.path.join(root, "digits_cnn", "1", "model.onnx")
    if force or not _done(digits):
        with tempfile.TemporaryDirectory() as tmp:
            res = zoo.train("digits_cnn", data="digits", epochs=epochs, out_dir=tmp, progress=False)
            os.makedirs(os.path.dirname(digits), exist_ok=True)
            shutil.copyfile(res.onnx_path, digits + ".tmp")
            os.replace(digits + ".tmp", digits)
            status["digits_cnn"] = f"trained: test accuracy {res.accuracy:.3f} ({res.seconds:.1f} s)"
    else:
        status["digits_cnn"] = "up to date"
    if os.path.isdir(os.path.join(root, "digits_cnn_tuili")):
        _copy_if_changed(digits, os.path.join(root, "digits_cnn_tuili", "1", "model.onnx"))
        status["digits_cnn_tuili"] = "copied from digits_cnn"
    # 2. exported zoo models (random weights)
    for name in ("resnet18", "bert_small"):
        if not os.path.isdir(os.path.join(root, name)):
            continue
        path = os.path.join(root, name, "1", "model.onnx")
        if force or not _done(path):
            tmp = path + ".partial.onnx"
            zoo.export(name, tmp)
            os.replace(tmp, path)
            status[name] = "exported"
        else:
            status[name] = "up to date"
    # 3. the ensemble's (empty) version directory
    if os.path.isdir(os.path.join(root, "digits_pipeline")):
        os.makedirs(os.path.join(root, "digits_pipeline", "1"), exist_ok=True)
        status["digits_pipeline"] = "ensemble"
    log.info("example repository %s built in %.1f s", root, time.perf_counter() - t0)
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.build", description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", default=DEFAULT_ROOT)
    p.add_argument("--epochs", type=int, default=None, help="digits CNN training epochs (zoo default if unset)")
    p.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not os.path.isdir(args.root):
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    for name, st in build(args.root, epochs=args.epochs, force=args.force).items():
        print(f"{name:20s} {st}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
