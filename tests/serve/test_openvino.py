"""The OpenVINO backend behind `tuili serve`, driven by the official tritonclient: IR and ONNX model
files, dynamic batching, its config parameters, and broken model directories that must not take the
other models down. Skipped when OpenVINO (the optional extra) is not installed."""
from __future__ import annotations

import os

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.serve.repo_builder import linear_classifier  # noqa: E402

CONFIG = """
name: "{name}"
backend: "openvino"
max_batch_size: 8
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
{params}
"""


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def _model_dir(root, name: str, files: dict[str, bytes], params: str = "") -> None:
    os.makedirs(os.path.join(root, name, "1"))
    for fname, data in files.items():
        with open(os.path.join(root, name, "1", fname), "wb") as f:
            f.write(data)
    with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
        f.write(CONFIG.format(name=name, params=params))


@pytest.fixture(scope="module")
def ov_server(tmp_path_factory, server_factory):
    root = tmp_path_factory.mktemp("ov_repo")
    model, w, b = linear_classifier()
    onnx_bytes = model.SerializeToString()
    ir_dir = tmp_path_factory.mktemp("ir")
    ov.save_model(ov.convert_model(_save(onnx_bytes, ir_dir / "m.onnx")), str(ir_dir / "model.xml"), compress_to_fp16=False)
    ir = {"model.xml": (ir_dir / "model.xml").read_bytes(), "model.bin": (ir_dir / "model.bin").read_bytes()}
    _model_dir(root, "ov_ir", ir, _param("INFERENCE_PRECISION_HINT", "f32") + _param("PERFORMANCE_HINT", "LATENCY"))
    _model_dir(root, "ov_onnx", {"model.onnx": onnx_bytes}, _param("INFERENCE_PRECISION_HINT", "f32"))
    _model_dir(root, "ov_default", ir)  # OpenVINO's default precision (bf16 on a CPU with native bf16)
    _model_dir(root, "ov_no_bin", {"model.xml": ir["model.xml"]})
    _model_dir(root, "ov_corrupt", {"model.xml": b"<net><layers>", "model.bin": b""})
    _model_dir(root, "ov_bad_param", ir, _param("SKIP_OV_DYNAMIC_BATCHSIZE", "YES"))
    _model_dir(root, "ov_gpu", ir, _param("TARGET_DEVICE", "GPU"))
    _model_dir(root, "ov_bin_outside", {"model.xml": ir["model.xml"]})  # its weights linked from outside the model
    os.symlink(ir_dir / "model.bin", os.path.join(root, "ov_bin_outside", "1", "model.bin"))
    server = server_factory(str(root))
    yield server, w, b
    server.stop()


def _save(data: bytes, path) -> str:
    path.write_bytes(data)
    return str(path)


def _infer(client, mod, name: str, x: np.ndarray) -> np.ndarray:
    inp = mod.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(name, [inp]).as_numpy("logits")


@pytest.mark.parametrize("model", ["ov_ir", "ov_onnx"])
@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_infers_like_the_reference(ov_server, model, proto):
    server, w, b = ov_server
    mod = httpclient if proto == "http" else grpcclient
    client = mod.InferenceServerClient(server.http if proto == "http" else server.grpc)
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(_infer(client, mod, model, x), x @ w + b, rtol=1e-4, atol=1e-4)


def test_metadata_and_dynamic_batch(ov_server):
    server, w, b = ov_server
    client = httpclient.InferenceServerClient(server.http)
    meta = client.get_model_metadata("ov_ir")
    assert meta["platform"] == "openvino"
    assert meta["inputs"][0]["shape"] == [-1, 64]
    from concurrent.futures import ThreadPoolExecutor

    xs = [np.full((1, 64), i, np.float32) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda x: _infer(httpclient.InferenceServerClient(server.http), httpclient, "ov_ir", x), xs))
    for x, y in zip(xs, outs):
        np.testing.assert_allclose(y, x @ w + b, rtol=1e-4, atol=1e-3)


def test_default_precision_drift_is_small(ov_server):
    server, w, b = ov_server
    client = httpclient.InferenceServerClient(server.http)
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    ref = x @ w + b
    got = _infer(client, httpclient, "ov_default", x)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()  # bf16 keeps ~3 significant digits
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75


@pytest.mark.parametrize("model, words", [
    ("ov_no_bin", "model.bin"),
    ("ov_corrupt", "could not read"),
    ("ov_bad_param", "SKIP_OV_DYNAMIC_BATCHSIZE"),
    ("ov_gpu", "TARGET_DEVICE"),
    ("ov_bin_outside", "outside the model directory"),
])
def test_broken_models_fail_alone_with_a_reason(ov_server, model, words):
    server, _, _ = ov_server
    client = httpclient.InferenceServerClient(server.http)
    assert client.is_model_ready("ov_ir") and not client.is_model_ready(model)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert words in index[model]["reason"]


def test_wrong_shape_is_a_client_error(ov_server):
    server, _, _ = ov_server
    client = httpclient.InferenceServerClient(server.http)
    with pytest.raises(InferenceServerException) as e:
        _infer(client, httpclient, "ov_ir", np.zeros((2, 63), np.float32))
    assert e.value.status() == "400"
