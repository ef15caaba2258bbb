"""The HTTP endpoint driven by the unmodified official tritonclient.http, plus raw httpx
requests for JSON edge cases and every bad-input case of issue 4 item 11."""
from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

MAX_BODY = 1_000_000


@pytest.fixture(scope="module")
def srv(test_repo, server_factory):
    s = server_factory(test_repo[0], "--max-body-bytes", str(MAX_BODY))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(srv):
    c = th.InferenceServerClient(srv.http, concurrency=4)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=f"http://{srv.http}", timeout=30) as c:
        yield c


def add_sub_inputs(a, b, binary=True):
    ins = [th.InferInput("INPUT0", list(a.shape), "FP32"), th.InferInput("INPUT1", list(b.shape), "FP32")]
    ins[0].set_data_from_numpy(a, binary_data=binary)
    ins[1].set_data_from_numpy(b, binary_data=binary)
    return ins


def good_request(client):
    """A request that must succeed after any bad one."""
    a = np.random.rand(3, 16).astype(np.float32)
    b = np.random.rand(3, 16).astype(np.float32)
    r = client.infer("add_sub", add_sub_inputs(a, b))
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(r.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    assert client.is_server_live() and client.is_server_ready()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


def scrape(srv) -> dict[tuple[str, str, str], float]:
    text = httpx.get(f"http://{srv.metrics}/metrics", timeout=10).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            # the parser reports Triton-style counters (no _total in the text) as <family>_total
            name = fam.name if fam.type == "counter" and s.name == fam.name + "_total" else s.name
            out[(name, s.labels.get("model", ""), s.labels.get("version", ""))] = s.value
    return out


# --------------------------------------------------------------------------- health & metadata
def test_health(client, http):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200


def test_server_metadata(client):
    md = client.get_server_metadata()
    assert md["name"] == "tuili"
    assert {"binary_tensor_data", "classification", "model_repository", "statistics"} <= set(md["extensions"])


def test_model_metadata_and_ready(client):
    md = client.get_model_metadata("add_sub")
    assert md["name"] == "add_sub" and md["versions"] == ["1", "2"]
    assert md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
                            {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]}]
    assert client.get_model_metadata("add_sub", "1")["versions"] == ["1"]
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    assert not client.is_model_ready("no_such_model")


def test_model_config(client):
    cfg = client.get_model_config("add_sub")
    assert cfg["name"] == "add_sub" and cfg["max_batch_size"] == 8
    assert cfg["instance_group"][0]["count"] == 2
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    # add_sub_int has no config.pbtxt: auto-completed from the ONNX model.
    auto = client.get_model_config("add_sub_int")
    assert auto["max_batch_size"] == 0
    assert [(i["name"], i["data_type"], i["dims"]) for i in auto["input"]] == [("INPUT0", "TYPE_INT32", [4]), ("INPUT1", "TYPE_INT32", [4])]
    assert auto["backend"] == "onnxruntime"


def test_repository_index(client, http):
    idx = client.get_model_repository_index()
    names = {(m["name"], m.get("version")) for m in idx}
    assert ("add_sub", "1") in names and ("add_sub", "2") in names and ("image_classifier", "1") in names
    assert all(m["state"] == "READY" for m in idx if m["name"] != "add_sub_tuili")  # that one needs the tuili engine
    r = http.post("/v2/repository/index", json={"ready": True})
    assert r.status_code == 200 and len(r.json()) == len(idx)


# --------------------------------------------------------------------------- inference
@pytest.mark.parametrize("binary", [True, False])
def test_infer_add_sub(client, binary):
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.5, np.float32)
    outs = [th.InferRequestedOutput("OUTPUT0", binary_data=binary), th.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    r = client.infer("add_sub", add_sub_inputs(a, b, binary), outputs=outs, request_id="req-7")
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    resp = r.get_response()
    assert resp["id"] == "req-7" and resp["model_name"] == "add_sub" and resp["model_version"] == "2"


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_compressed_request(client, algo):
    a = np.random.rand(2, 16).astype(np.float32)
    r = client.infer("add_sub", add_sub_inputs(a, a), request_compression_algorithm=algo, response_compression_algorithm=algo)
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), 2 * a, rtol=1e-6)


def test_infer_version_and_output_subset(client):
    a = np.ones((1, 16), np.float32)
    r = client.infer("add_sub", add_sub_inputs(a, a), model_version="1", outputs=[th.InferRequestedOutput("OUTPUT1")])
    assert r.get_response()["model_version"] == "1"
    assert r.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


def test_infer_tuili_backend(client):
    if not client.is_model_ready("add_sub_tuili"):
        pytest.skip("the tuili engine could not load the model (tuili.InferenceSession missing?)")
    a = np.random.rand(4, 16).astype(np.float32)
    b = np.random.rand(4, 16).astype(np.float32)
    r = client.infer("add_sub_tuili", add_sub_inputs(a, b))
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(r.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    assert client.get_model_metadata("add_sub_tuili")["platform"] == "tuili_onnx"


def test_reshape_in_config(client):
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    i = th.InferInput("X", [2, 16], "FP32")
    i.set_data_from_numpy(x)
    r = client.infer("reshaped", [i])
    y = r.as_numpy("Y")
    assert y.shape == (2, 16)
    np.testing.assert_array_equal(y, x.reshape(2, 4, 4).transpose(0, 2, 1).reshape(2, 16))
    assert client.get_model_metadata("reshaped")["inputs"][0]["shape"] == [-1, 16]


def test_torch_exported_program(client, test_repo):
    w, b = test_repo[1]["torch_w"], test_repo[1]["torch_b"]
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    i = th.InferInput("INPUT__0", [3, 8], "FP32")
    i.set_data_from_numpy(x)
    r = client.infer("torch_linear", [i])
    np.testing.assert_allclose(r.as_numpy("OUTPUT__0"), x @ w.T + b, rtol=1e-5, atol=1e-6)
    assert client.get_model_metadata("torch_linear")["platform"] == "pytorch_libtorch"


def test_infer_int32_autocompleted(client):
    a = np.array([1, 2, 3, 4], np.int32)
    b = np.array([10, 20, 30, 40], np.int32)
    ins = [th.InferInput("INPUT0", [4], "INT32"), th.InferInput("INPUT1", [4], "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b, binary_data=False)
    r = client.infer("add_sub_int", ins)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    assert r.as_numpy("OUTPUT0").dtype == np.int32


def test_infer_bytes_python_backend(client):
    for binary in (True, False):
        x = np.array(["hello", "tuili", "推理"], dtype=object)
        i = th.InferInput("TEXT", [3], "BYTES")
        i.set_data_from_numpy(x, binary_data=binary)
        r = client.infer("upper", [i], outputs=[th.InferRequestedOutput("TEXT_OUT", binary_data=binary), th.InferRequestedOutput("LENGTH")])
        got = [v.decode() if isinstance(v, bytes) else v for v in r.as_numpy("TEXT_OUT")]
        assert got == ["HELLO", "TUILI", "推理"]
        np.testing.assert_array_equal(r.as_numpy("LENGTH"), [5, 5, len("推理".encode())])


def test_classification_extension(client, test_repo):
    w, b = test_repo[1]["classifier_w"], test_repo[1]["classifier_b"]
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    i = th.InferInput("x", [4, 64], "FP32")
    i.set_data_from_numpy(x)
    r = client.infer("classifier", [i], outputs=[th.InferRequestedOutput("logits", class_count=3)])
    got = r.as_numpy("logits")
    assert got.shape == (4, 3)
    logits = x @ w + b
    for row, lg in zip(got, logits):
        top = np.argsort(-lg)[:3]
        parts = [v.decode().split(":") for v in row]
        assert [int(p[1]) for p in parts] == list(top)
        assert [p[2] for p in parts] == [f"digit_{t}" for t in top]
        np.testing.assert_allclose([float(p[0]) for p in parts], lg[top], rtol=1e-4)


def test_ensemble_image_to_label(client, test_repo):
    w, b = test_repo[1]["classifier_w"], test_repo[1]["classifier_b"]
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (8, 8)) for _ in range(2)]
    data = np.array([[png_bytes(im)] for im in imgs], dtype=object)
    i = th.InferInput("IMAGE", [2, 1], "BYTES")
    i.set_data_from_numpy(data)
    r = client.infer("image_classifier", [i], outputs=[th.InferRequestedOutput("LOGITS", class_count=1)])
    got = r.as_numpy("LOGITS")
    for im, row in zip(imgs, got):
        want = int(np.argmax((im.reshape(64) / 255.0).astype(np.float32) @ w + b))
        assert row[0].decode().split(":")[1:] == [str(want), f"digit_{want}"]


def test_concurrent_requests_are_batched_and_split_correctly(client):
    """Many concurrent requests of different batch sizes through the dynamic batcher:
    each gets exactly its own rows back."""
    rng = np.random.default_rng(3)
    cases = [(rng.random((n, 16), dtype=np.float32), rng.random((n, 16), dtype=np.float32)) for n in [1, 3, 2, 5, 1, 4, 8, 2] * 3]
    futures = [client.async_infer("add_sub", add_sub_inputs(a, b)) for a, b in cases]
    for (a, b), f in zip(cases, futures):
        r = f.get_result()
        np.testing.assert_allclose(r.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(r.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_statistics(client):
    before = client.get_inference_statistics("add_sub", "1")["model_stats"][0]
    a = np.ones((2, 16), np.float32)
    client.infer("add_sub", add_sub_inputs(a, a), model_version="1")
    after = client.get_inference_statistics("add_sub", "1")["model_stats"][0]
    assert after["name"] == "add_sub" and after["version"] == "1"
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] >= before["inference_count"] + 2
    assert after["execution_count"] >= before["execution_count"] + 1
    for k in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][k]["count"] > before["inference_stats"][k]["count"]
    assert any(bs["batch_size"] >= 2 for bs in after["batch_stats"])
    all_stats = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in all_stats} >= {("add_sub", "1"), ("add_sub", "2"), ("classifier", "1")}


def test_metrics_move(client, srv):
    before = scrape(srv)
    a = np.ones((3, 16), np.float32)
    client.infer("add_sub", add_sub_inputs(a, a), model_version="2")
    with pytest.raises(InferenceServerException):
        client.infer("add_sub", add_sub_inputs(np.ones((3, 15), np.float32), np.ones((3, 15), np.float32)), model_version="2")
    after = scrape(srv)
    key = ("add_sub", "2")
    assert after[("nv_inference_request_success", *key)] == before[("nv_inference_request_success", *key)] + 1
    assert after[("nv_inference_request_failure", *key)] == before[("nv_inference_request_failure", *key)] + 1
    assert after[("nv_inference_count", *key)] >= before[("nv_inference_count", *key)] + 3
    assert after[("nv_inference_exec_count", *key)] >= before[("nv_inference_exec_count", *key)] + 1
    for name in ("nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us"):
        assert after[(name, *key)] >= before[(name, *key)]
    assert after[("nv_inference_compute_infer_duration_us", *key)] > before[("nv_inference_compute_infer_duration_us", *key)] or \
        after[("nv_inference_request_duration_us", *key)] > before[("nv_inference_request_duration_us", *key)]
    hist = ("tuili_inference_request_latency_seconds_count", *key)
    assert after[hist] == before[hist] + 1
    assert ("nv_inference_pending_request_count", *key) in after


def test_log_settings(client, http):
    st = client.get_log_settings()
    assert st["log_verbose_level"] == 0 and st["log_info"] is True
    st = client.update_log_settings({"log_verbose_level": 1})
    assert st["log_verbose_level"] == 1
    assert client.update_log_settings({"log_verbose_level": 0})["log_verbose_level"] == 0
    r = http.post("/v2/logging", json={"log_verbose_level": "loud"})
    assert r.status_code == 400 and "log_verbose_level" in r.json()["error"]
    good_request(client)


def test_model_control_disabled_in_none_mode(client):
    with pytest.raises(InferenceServerException, match="explicit"):
        client.load_model("add_sub")
    with pytest.raises(InferenceServerException, match="explicit"):
        client.unload_model("add_sub")
    good_request(client)


# --------------------------------------------------------------------------- raw JSON edge cases
def test_json_nested_data_and_scalars(http):
    body = {"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [2, 16], "data": [list(range(16)), list(range(16))]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [2, 16], "data": [1.5] * 32},
    ]}
    r = http.post("/v2/models/add_sub/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["OUTPUT0"]["shape"] == [2, 16] and out["OUTPUT0"]["datatype"] == "FP32"
    assert out["OUTPUT0"]["data"][:3] == [1.5, 2.5, 3.5]
    assert "id" not in doc


def test_json_binary_output_request_parameter(http):
    a = np.ones((1, 16), np.float32)
    body = {"parameters": {"binary_data_output": True}, "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": a.ravel().tolist()},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": a.ravel().tolist()},
    ]}
    r = http.post("/v2/models/add_sub/infer", json=body)
    assert r.status_code == 200
    hl = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:hl])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [64, 64]
    np.testing.assert_array_equal(np.frombuffer(r.content[hl:hl + 64], np.float32), np.full(16, 2, np.float32))


def test_binary_input_raw(http):
    a = np.arange(16, dtype=np.float32)[None]
    header = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}},
    ], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]}).encode()
    r = http.post("/v2/models/add_sub/infer", content=header + a.tobytes() + a.tobytes(),
                  headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == (2 * a).ravel().tolist()


def test_unknown_endpoint_is_json_404(http):
    r = http.get("/v2/nope")
    assert r.status_code == 404 and "error" in r.json()


# --------------------------------------------------------------------------- bad input (issue 4 item 11)
def _bad(http, path, status, match, **kw):
    r = http.post(path, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert match in err, err
    return err


def _fp32(name, shape, n=None):
    return {"name": name, "datatype": "FP32", "shape": shape, "data": [0.0] * (n if n is not None else int(np.prod(shape)))}


def test_unknown_model_and_version(client, http):
    _bad(http, "/v2/models/no_such_model/infer", 404, "no_such_model", json={"inputs": []})
    _bad(http, "/v2/models/add_sub/versions/9/infer", 404, "version", json={"inputs": [_fp32("INPUT0", [1, 16]), _fp32("INPUT1", [1, 16])]})
    assert http.get("/v2/models/no_such_model").status_code == 404
    assert http.get("/v2/models/no_such_model/config").status_code == 404
    with pytest.raises(InferenceServerException) as e:
        client.infer("no_such_model", add_sub_inputs(np.ones((1, 16), np.float32), np.ones((1, 16), np.float32)))
    assert "404" in str(e.value.status()) and "no_such_model" in e.value.message()
    good_request(client)


def test_wrong_input_name(client, http):
    _bad(http, "/v2/models/add_sub/infer", 400, "INPUTX", json={"inputs": [_fp32("INPUTX", [1, 16]), _fp32("INPUT1", [1, 16])]})
    good_request(client)


def test_wrong_shape(client, http):
    _bad(http, "/v2/models/add_sub/infer", 400, "shape", json={"inputs": [_fp32("INPUT0", [1, 15]), _fp32("INPUT1", [1, 15])]})
    _bad(http, "/v2/models/add_sub/infer", 400, "batch size", json={"inputs": [_fp32("INPUT0", [9, 16]), _fp32("INPUT1", [9, 16])]})
    _bad(http, "/v2/models/add_sub/infer", 400, "elements", json={"inputs": [_fp32("INPUT0", [1, 16], 10), _fp32("INPUT1", [1, 16])]})
    _bad(http, "/v2/models/add_sub/infer", 400, "disagree", json={"inputs": [_fp32("INPUT0", [1, 16]), _fp32("INPUT1", [2, 16])]})
    good_request(client)


def test_wrong_dtype(client, http):
    bad = {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}
    _bad(http, "/v2/models/add_sub/infer", 400, "datatype", json={"inputs": [bad, _fp32("INPUT1", [1, 16])]})
    _bad(http, "/v2/models/add_sub/infer", 400, "input 'INPUT0': unknown V2 datatype 'FP33'",
         json={"inputs": [{**bad, "datatype": "FP33"}, _fp32("INPUT1", [1, 16])]})
    _bad(http, "/v2/models/add_sub/infer", 400, "FP32",
         json={"inputs": [{**_fp32("INPUT0", [1, 16]), "data": ["a"] * 16}, _fp32("INPUT1", [1, 16])]})
    good_request(client)


def test_missing_input(client, http):
    _bad(http, "/v2/models/add_sub/infer", 400, "missing input", json={"inputs": [_fp32("INPUT0", [1, 16])]})
    _bad(http, "/v2/models/add_sub/infer", 400, "neither", json={"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16]}]})
    good_request(client)


def test_unknown_output(client, http):
    _bad(http, "/v2/models/add_sub/infer", 400, "OUTPUT9",
         json={"inputs": [_fp32("INPUT0", [1, 16]), _fp32("INPUT1", [1, 16])], "outputs": [{"name": "OUTPUT9"}]})
    good_request(client)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"inputs": 5}', b'{"inputs": [{"name": 1}]}', b"\xff\xfe"])
def test_malformed_json(client, http, body):
    r = http.post("/v2/models/add_sub/infer", content=body)
    assert r.status_code == 400 and r.json()["error"]
    good_request(client)


def test_binary_size_disagrees_with_header(client, http):
    a = np.zeros(16, np.float32).tobytes()
    def hdr(sizes):
        return json.dumps({"inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": sizes[0]}},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": sizes[1]}}]}).encode()
    h = hdr([64, 64])
    # body shorter than the declared binary sizes
    _bad(http, "/v2/models/add_sub/infer", 400, "binary_data_size", content=h + a,
         headers={"Inference-Header-Content-Length": str(len(h))})
    # binary size that disagrees with the shape
    h2 = hdr([60, 64])
    _bad(http, "/v2/models/add_sub/infer", 400, "needs 64", content=h2 + a[:60] + a,
         headers={"Inference-Header-Content-Length": str(len(h2))})
    # extra bytes nobody claims
    _bad(http, "/v2/models/add_sub/infer", 400, "no input claims", content=h + a + a + b"xx",
         headers={"Inference-Header-Content-Length": str(len(h))})
    # header length beyond the body
    _bad(http, "/v2/models/add_sub/infer", 400, "Inference-Header-Content-Length", content=h,
         headers={"Inference-Header-Content-Length": str(len(h) + 100)})
    # truncated BYTES element
    hb = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}).encode()
    _bad(http, "/v2/models/upper/infer", 400, "BYTES", content=hb + (10).to_bytes(4, "little") + b"ab",
         headers={"Inference-Header-Content-Length": str(len(hb))})
    good_request(client)


def test_body_over_limit_is_413(client, http):
    big = b"0" * (MAX_BODY + 10)
    r = http.post("/v2/models/add_sub/infer", content=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    # chunked upload (no Content-Length) is cut off too
    def gen():
        for _ in range(20):
            yield b"0" * (MAX_BODY // 10)
    r = http.post("/v2/models/add_sub/infer", content=gen())
    assert r.status_code == 413
    good_request(client)


def test_unreadable_image(client):
    i = th.InferInput("IMAGE", [2, 1], "BYTES")
    i.set_data_from_numpy(np.array([[b"definitely not a png"], [png_bytes(np.zeros((8, 8)))]], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("image_classifier", [i])
    assert e.value.status() == "400" and "decode the image" in e.value.message()
    good_request(client)


def test_bad_requests_do_not_disturb_concurrent_good_ones(srv):
    """Good and bad requests interleaved from threads into the same batching model."""
    results, errors = [], []

    def worker(k):
        with httpx.Client(base_url=f"http://{srv.http}", timeout=30) as c:
            for j in range(10):
                n = 1 + (k + j) % 3
                a = np.full((n, 16), k + j, np.float32)
                bad = (k + j) % 2 == 0
                width = 15 if bad else 16
                body = {"inputs": [_fp32("INPUT0", [n, width]), _fp32("INPUT1", [n, width])]}
                body["inputs"][0]["data"] = np.full(n * width, k + j, np.float32).tolist()
                r = c.post("/v2/models/add_sub/infer", json=body)
                if bad:
                    errors.append(r.status_code)
                else:
                    results.append((r.status_code, r.json()["outputs"][0]["data"] == a.ravel().tolist()))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors and all(s == 400 for s in errors)
    assert results and all(s == 200 and ok for s, ok in results)


def test_queue_full_is_503(srv, client):
    """sleepy has max_queue_size 1 and one instance: while one request runs and one waits,
    a third is rejected with 503 (UNAVAILABLE)."""
    def req(seconds):
        i = th.InferInput("X", [1], "FP32")
        i.set_data_from_numpy(np.array([seconds], np.float32))
        return i

    c = th.InferenceServerClient(srv.http, concurrency=4)
    try:
        running = c.async_infer("sleepy", [req(2.0)])
        import time
        deadline = time.monotonic() + 10
        while scrape(srv).get(("nv_inference_pending_request_count", "sleepy", "1"), 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        # While the 2 s request runs, a queue of 1 cannot take all of these.
        others = [c.async_infer("sleepy", [req(0.0)]) for _ in range(3)]
        statuses = []
        for f in others:
            try:
                assert f.get_result().as_numpy("Y")[0] == 0.0
                statuses.append(200)
            except InferenceServerException as e:
                statuses.append(int(e.status()))
                assert "max_queue_size" in e.message()
        assert 503 in statuses and set(statuses) <= {200, 503}
        assert running.get_result().as_numpy("Y")[0] == pytest.approx(2.0)
    finally:
        c.close()
    good_request(client)


# --------------------------------------------------------------------------- hardened input (issue 11 item 2)
def test_deep_json_is_400(client, http):
    for body in (b"[" * 1000 + b"]" * 1000, b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        _bad(http, "/v2/models/add_sub/infer", 400, "", content=body)
    data = "[" * 500 + "0.0" + "]" * 500
    body = '{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ' + data.replace("0.0", '"a"') + "}]}"
    _bad(http, "/v2/models/upper/infer", 400, "deeper than its shape", content=body.encode())
    good_request(client)


@pytest.mark.parametrize("params, word", [
    ({"priority": float("inf")}, "priority"), ({"priority": 1.5}, "priority"), ({"priority": "high"}, "priority"),
    ({"timeout": -1}, "timeout"), ({"timeout": True}, "timeout"), ({"priority": 2**64}, "priority"),
    ({"binary_data_output": "yes"}, "binary_data_output"), ({"custom": {"nested": 1}}, "custom"),
])
def test_request_parameters_are_typed(client, http, params, word):
    body = {"inputs": [_fp32("INPUT0", [1, 16]), _fp32("INPUT1", [1, 16])], "parameters": params}
    err = _bad(http, "/v2/models/add_sub/infer", 400, word, content=json.dumps(body).encode())
    assert "parameter" in err
    good_request(client)


@pytest.mark.parametrize("params", [{"classification": "abc"}, {"class_count": -2}, {"classification": 2.5}, {"binary_data": 1}])
def test_output_parameters_are_typed(client, http, params):
    body = {"inputs": [_fp32("INPUT0", [1, 16]), _fp32("INPUT1", [1, 16])], "outputs": [{"name": "OUTPUT0", "parameters": params}]}
    _bad(http, "/v2/models/add_sub/infer", 400, next(iter(params)), json=body)
    good_request(client)


@pytest.mark.parametrize("shape, word", [
    ([0, 2**62, 2**62], "bytes"), ([0, 2**64], "bytes"), ([1] * 65, "dimensions"), ([-1, 16], "negative"), ([1, "16"], "shape"),
])
def test_absurd_shapes_are_400_before_any_allocation(client, http, shape, word):
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": []}, _fp32("INPUT1", [1, 16])]}
    _bad(http, "/v2/models/add_sub/infer", 400, word, json=body)
    good_request(client)


def test_compressed_bodies_are_inflated_within_the_limit(client, http):
    import gzip
    import zlib

    bomb = gzip.compress(b"\0" * (100 * MAX_BODY), compresslevel=9)  # ~100 KB that inflate to 100 MB
    assert len(bomb) < MAX_BODY
    _bad(http, "/v2/models/add_sub/infer", 413, "decompressed", content=bomb, headers={"Content-Encoding": "gzip"})
    _bad(http, "/v2/models/add_sub/infer", 413, "decompressed", content=zlib.compress(b" " * (2 * MAX_BODY)),
         headers={"Content-Encoding": "deflate"})
    good = json.dumps({"inputs": [_fp32("INPUT0", [1, 16]), _fp32("INPUT1", [1, 16])]}).encode()
    _bad(http, "/v2/models/add_sub/infer", 400, "truncated", content=gzip.compress(good)[:-8], headers={"Content-Encoding": "gzip"})
    _bad(http, "/v2/models/add_sub/infer", 400, "after the end", content=gzip.compress(good) + b"junk",
         headers={"Content-Encoding": "gzip"})
    _bad(http, "/v2/models/add_sub/infer", 400, "Content-Encoding", content=good, headers={"Content-Encoding": "br"})
    r = http.post("/v2/models/add_sub/infer", content=gzip.compress(good), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    good_request(client)


def test_error_messages_are_clipped(client, http):
    long = "m" * 100_000
    r = http.post("/v2/models/add_sub/infer", json={"inputs": [_fp32(long, [1, 16]), _fp32("INPUT1", [1, 16])]})
    assert r.status_code == 400 and len(r.json()["error"]) < 1100 and "more characters" in r.json()["error"]
    r = http.post("/v2/models/add_sub/infer", json={"inputs": [], "id": [[[[["x"]]]]]})
    assert r.status_code == 400 and "id" in r.json()["error"]
    good_request(client)


def test_tritons_error_texts_start_the_messages(client, http):
    err = _bad(http, "/v2/models/no_such_model/infer", 404, "", json={"inputs": []})
    assert err.startswith("Request for unknown model: 'no_such_model' is not found; ")
    err = _bad(http, "/v2/models/add_sub/versions/9/infer", 404, "", json={"inputs": []})
    assert err.startswith("Request for unknown model: 'add_sub' version 9 is not found; ")
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert e.value.message().startswith("Request for unknown model: 'no_such_model' is not found")
