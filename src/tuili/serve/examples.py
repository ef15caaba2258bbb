"""Build and query examples/model_repository.

    python -m tuili.serve.examples build examples/model_repository   # idempotent; fast when built
    python -m tuili.serve.examples client --url 127.0.0.1:8000 --digit 7
    python -m tuili.serve.examples client --image my_digit.png
    python -m tuili.serve.examples curl --digit 3          # prints a curl command (JSON tensors)

The config.pbtxt files are committed; ``build`` generates the model files (gitignored):
a digits CNN trained here on scikit-learn's digits (tuili.zoo), ResNet-18 and BERT-small
exported from tuili.zoo, and the python-backend steps of the image -> label ensemble.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time

log = logging.getLogger("tuili.serve.examples")

_EXAMPLE_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "example_models")


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
    # 3. python-backend steps and the ensemble's (empty) version directory
    for name, src in (("digits_preprocess", "digits_preprocess.py"), ("digits_topk", "digits_topk.py")):
        if os.path.isdir(os.path.join(root, name)):
            changed = _copy_if_changed(os.path.join(_EXAMPLE_MODELS, src), os.path.join(root, name, "1", "model.py"))
            status[name] = "written" if changed else "up to date"
    if os.path.isdir(os.path.join(root, "digits_pipeline")):
        os.makedirs(os.path.join(root, "digits_pipeline", "1"), exist_ok=True)
        status["digits_pipeline"] = "ensemble"
    log.info("example repository %s built in %.1f s", root, time.perf_counter() - t0)
    return status


def digit_png(index: int | None = None, digit: int | None = None, scale: int = 4) -> tuple[bytes, int]:
    """A PNG of one of scikit-learn's held-out digits (light on dark, upscaled); returns (png, true label)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    ds = load_digits()
    n = len(ds.target)
    if digit is not None:
        # pick a sample from the end of the data set (the part a model trained on a split is least likely to have seen)
        idx = [i for i in range(n - 1, -1, -1) if ds.target[i] == digit][0]
    else:
        idx = (n - 1) if index is None else index % n
    img = (ds.images[idx] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    pil = Image.fromarray(img, mode="L").resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, "PNG")
    return buf.getvalue(), int(ds.target[idx])


def curl_command(url: str = "127.0.0.1:8000", digit: int = 3) -> str:
    """A copy-paste curl command asking digits_cnn (JSON tensors, classification extension) about a real digit."""
    import json

    from sklearn.datasets import load_digits

    ds = load_digits()
    idx = [i for i in range(len(ds.target) - 1, -1, -1) if ds.target[i] == digit][0]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                        "data": [int(v) for v in ds.images[idx].ravel()]}],
            "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}
    return f"curl -s -X POST http://{url}/v2/models/digits_cnn/infer -d '{json.dumps(body, separators=(',', ':'))}'"


def client(url: str, image: str | None = None, digit: int | None = None, model: str = "digits_pipeline") -> int:
    import numpy as np
    import tritonclient.http as th

    if image:
        with open(image, "rb") as f:
            data, truth = f.read(), None
    else:
        data, truth = digit_png(digit=7 if digit is None else digit)
    c = th.InferenceServerClient(url)
    inp = th.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    r = c.infer(model, [inp], outputs=[th.InferRequestedOutput("LABELS"), th.InferRequestedOutput("SCORES")])
    labels = [x.decode() for x in r.as_numpy("LABELS")[0]]
    scores = r.as_numpy("SCORES")[0]
    src = image or f"scikit-learn digit (true label {truth})"
    print(f"{model} on {src}:")
    for lab, s in zip(labels, scores):
        print(f"  {lab}: {s:.3f}")
    c.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuili.serve.examples", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="generate the model files of the example repository")
    b.add_argument("root", nargs="?", default="examples/model_repository")
    b.add_argument("--epochs", type=int, default=None, help="digits CNN training epochs (zoo default if unset)")
    b.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    c = sub.add_parser("client", help="send a digit image to the running server and print the top labels")
    c.add_argument("--url", default="127.0.0.1:8000")
    c.add_argument("--image", help="PNG/JPEG file (default: a held-out scikit-learn digit)")
    c.add_argument("--digit", type=int, help="which scikit-learn digit to send (0-9)")
    c.add_argument("--model", default="digits_pipeline")
    k = sub.add_parser("curl", help="print a curl command that asks digits_cnn about a scikit-learn digit")
    k.add_argument("--url", default="127.0.0.1:8000")
    k.add_argument("--digit", type=int, default=3)
    s = sub.add_parser("sample", help="write a scikit-learn digit as a PNG file")
    s.add_argument("digit", type=int)
    s.add_argument("-o", "--output", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "build":
        if not os.path.isdir(args.root):
            print(f"error: {args.root} is not a directory", file=sys.stderr)
            return 2
        for name, st in build(args.root, epochs=args.epochs, force=args.force).items():
            print(f"{name:20s} {st}")
        return 0
    if args.cmd == "client":
        return client(args.url, args.image, args.digit, args.model)
    if args.cmd == "curl":
        print(curl_command(args.url, args.digit))
        return 0
    png, _ = digit_png(digit=args.digit)
    out = args.output or f"digit_{args.digit}.png"
    with open(out, "wb") as f:
        f.write(png)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
