"""examples/model_repository: committed configs parse, the python-backend steps work, and
(slow) the whole repository builds and answers a digit image with the right label."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from examples.client import digit_png
from tuili.backends.base import create_backend
from tuili.model_config import load_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples", "model_repository")
MODELS = ["digits_cnn", "digits_cnn_tuili", "digits_preprocess", "digits_topk", "digits_pipeline", "resnet18", "bert_small"]


@pytest.mark.parametrize("name", MODELS)
def test_example_configs_parse(name):
    cfg = load_model_config(os.path.join(EXAMPLES, name))
    assert cfg.name == name


def _python_model(tmp_path, name: str):
    d = tmp_path / name
    shutil.copytree(os.path.join(EXAMPLES, name), d, ignore=shutil.ignore_patterns("__pycache__"))
    b = create_backend("python")
    b.load(str(d), str(d / "1"), load_model_config(str(d)))
    return b


def test_digits_preprocess_and_topk(tmp_path):
    from sklearn.datasets import load_digits

    pre = _python_model(tmp_path, "digits_preprocess")
    png, label = digit_png(digit=4)
    out = pre.infer_many([{"IMAGE": np.array([[png]], dtype=object)}, {"IMAGE": np.array([[b"not an image"]], dtype=object)}])
    pixels = out[0]["PIXELS"]
    assert pixels.shape == (1, 1, 8, 8) and pixels.dtype == np.float32
    ds = load_digits()
    idx = [i for i in range(len(ds.target) - 1, -1, -1) if ds.target[i] == 4][0]
    np.testing.assert_allclose(pixels[0, 0], ds.images[idx], atol=16 / 255 + 1e-5)  # 8-bit PNG round trip
    assert "cannot decode the image" in str(out[1])

    topk = _python_model(tmp_path, "digits_topk")
    logits = np.array([[0, 1, 5, 2, 0, 0, 0, 0, 0, 3]], np.float32)
    res = topk.infer({"LOGITS": logits})
    assert list(res["LABELS"][0]) == [b"2", b"9", b"3"]
    p = np.exp(logits[0] - logits.max())
    p /= p.sum()
    np.testing.assert_allclose(res["SCORES"][0], p[[2, 9, 3]], rtol=1e-5)


@pytest.mark.slow
def test_example_repository_builds_and_serves(tmp_path, server_factory):
    import tritonclient.http as th

    from examples.build import build

    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo, ignore=shutil.ignore_patterns("*.onnx", "*.tmp", "__pycache__"))
    shutil.rmtree(repo / "resnet18")
    shutil.rmtree(repo / "bert_small")
    build(str(repo))
    assert build(str(repo))["digits_cnn"] == "up to date"
    srv = server_factory(str(repo))
    c = th.InferenceServerClient(srv.http)
    correct = 0
    for d in range(10):
        png, label = digit_png(digit=d)
        i = th.InferInput("IMAGE", [1, 1], "BYTES")
        i.set_data_from_numpy(np.array([[png]], dtype=object))
        r = c.infer("digits_pipeline", [i])
        correct += r.as_numpy("LABELS")[0][0].decode() == str(label)
    assert correct >= 8
    c.close()
    srv.stop()
