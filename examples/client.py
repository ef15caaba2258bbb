"""Ask the server running the example repository (`make run`) what digit an image shows.

    python -m examples.client --digit 7                     # a held-out scikit-learn digit -> digits_pipeline
    python -m examples.client --image my_digit.png          # your own PNG/JPEG
    python -m examples.client --digit 3 --curl              # print a curl command asking digits_cnn (JSON tensors)
    python -m examples.client --digit 5 --png digit_5.png   # write the digit image instead of sending it
"""
from __future__ import annotations

import argparse
import io
import json
import sys


def _digit_index(targets, digit: int) -> int:
    """A sample of ``digit`` from the end of scikit-learn's digits (the part a model trained on a
    split is least likely to have seen)."""
    return next(i for i in range(len(targets) - 1, -1, -1) if targets[i] == digit)


def digit_png(index: int | None = None, digit: int | None = None, scale: int = 4) -> tuple[bytes, int]:
    """A PNG of one of scikit-learn's held-out digits (light on dark, upscaled); returns (png, true label)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    ds = load_digits()
    n = len(ds.target)
    if digit is not None:
        idx = _digit_index(ds.target, digit)
    else:
        idx = (n - 1) if index is None else index % n
    img = (ds.images[idx] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    pil = Image.fromarray(img, mode="L").resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, "PNG")
    return buf.getvalue(), int(ds.target[idx])


def curl_command(url: str = "127.0.0.1:8000", digit: int = 3) -> str:
    """A copy-paste curl command asking digits_cnn (JSON tensors, classification extension) about a real digit."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    idx = _digit_index(ds.target, digit)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                        "data": [int(v) for v in ds.images[idx].ravel()]}],
            "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}
    return f"curl -s -X POST http://{url}/v2/models/digits_cnn/infer -d '{json.dumps(body, separators=(',', ':'))}'"


def ask(url: str, image: str | None = None, digit: int | None = None, model: str = "digits_pipeline") -> int:
    """Send the image bytes to ``model`` over HTTP and print its top labels and scores."""
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
    p = argparse.ArgumentParser(prog="python -m examples.client", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="127.0.0.1:8000", help="HTTP address of the server (default 127.0.0.1:8000)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--digit", type=int, help="which scikit-learn digit to send (0-9; default 7)")
    src.add_argument("--image", help="a PNG/JPEG file to send instead")
    p.add_argument("--model", default="digits_pipeline")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--curl", action="store_true", help="print a curl command asking digits_cnn instead of asking")
    out.add_argument("--png", metavar="FILE", help="write the digit as a PNG file instead of asking")
    args = p.parse_args(argv)
    digit = 7 if args.digit is None else args.digit
    if (args.curl or args.png) and args.image:
        p.error("--curl and --png work on a scikit-learn --digit, not on --image")
    if args.curl:
        print(curl_command(args.url, digit))
        return 0
    if args.png:
        with open(args.png, "wb") as f:
            f.write(digit_png(digit=digit)[0])
        print(args.png)
        return 0
    return ask(args.url, args.image, args.digit, args.model)


if __name__ == "__main__":
    sys.exit(main())
