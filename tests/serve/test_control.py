"""Model control modes (explicit, poll) and graceful shutdown, against real `tuili serve` processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import copy_repo
from tests.serve.repo_builder import _save, add_sub_model
from tests.serve.test_http import png_bytes


def wait_until(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def add_sub_ok(client, version=""):
    a = np.random.rand(2, 16).astype(np.float32)
    ins = [th.InferInput("INPUT0", [2, 16], "FP32"), th.InferInput("INPUT1", [2, 16], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(a)
    r = client.infer("add_sub", ins, model_version=version)
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), 2 * a, rtol=1e-6)
    return r.get_response()["model_version"]


def test_explicit_mode(test_repo, server_factory, tmp_path):
    srv = server_factory(test_repo[0], "--model-control-mode", "explicit", "--load-model", "add_sub")
    c = th.InferenceServerClient(srv.http)
    try:
        assert c.is_model_ready("add_sub") and not c.is_model_ready("classifier")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["classifier"]["state"] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("classifier")
        assert e.value.status() == "404"
        # loading an ensemble loads its composing models
        c.load_model("image_classifier")
        assert c.is_model_ready("image_classifier") and c.is_model_ready("preprocess") and c.is_model_ready("classifier")
        c.unload_model("classifier")
        assert not c.is_model_ready("classifier")
        # a request to the ensemble whose step's model is gone: Triton's words first, then tuili's
        image = th.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[png_bytes(np.zeros((8, 8), np.uint8))]], dtype=object))
        with pytest.raises(InferenceServerException) as e:
            c.infer("image_classifier", [image])
        assert e.value.message().startswith("Request for unknown model: 'classifier' has no available versions; "
                                            "ensemble 'image_classifier' step 1 runs it"), e.value.message()
        c.load_model("classifier")
        assert c.is_model_ready("classifier")
        # load with a config override (JSON): only version 1 of add_sub, max_batch_size 4
        cfg = {"name": "add_sub", "backend": "onnxruntime", "max_batch_size": 4, "version_policy": {"specific": {"versions": [1]}}}
        c.load_model("add_sub", config=json.dumps(cfg))
        assert c.get_model_config("add_sub")["max_batch_size"] == 4
        assert c.is_model_ready("add_sub", "1") and not c.is_model_ready("add_sub", "2")
        assert add_sub_ok(c) == "1"
        # errors: unknown model, bad config
        with pytest.raises(InferenceServerException) as e:
            c.load_model("no_such_model")
        assert e.value.status() == "404"
        with pytest.raises(InferenceServerException) as e:
            c.load_model("add_sub", config='{"max_batch_size": "x"}')
        assert e.value.status() == "400"
        assert add_sub_ok(c) == "1"  # a failed reload keeps the old versions serving
        c.unload_model("add_sub")
        assert not c.is_model_ready("add_sub")
        idx = {m["name"]: m for m in c.get_model_repository_index()}
        assert idx["add_sub"]["state"] == "UNAVAILABLE"
        # repeated load/unload cycles keep working
        for _ in range(3):
            c.load_model("add_sub")
            add_sub_ok(c)
            c.unload_model("add_sub")
    finally:
        c.close()


def test_poll_mode_loads_new_versions_and_unloads_removed_models(test_repo, server_factory, tmp_path):
    repo = copy_repo(test_repo[0], str(tmp_path / "repo"), ["add_sub", "classifier"])
    shutil.rmtree(os.path.join(repo, "add_sub", "2"))
    srv = server_factory(repo, "--model-control-mode", "poll", "--repository-poll-secs", "0.3")
    c = th.InferenceServerClient(srv.http, concurrency=8)
    stop = threading.Event()
    failures, done = [], []

    def traffic():
        cl = th.InferenceServerClient(srv.http)
        try:
            while not stop.is_set():
                try:
                    add_sub_ok(cl)
                    done.append(1)
                except Exception as e:  # any dropped request is a failure of the test
                    failures.append(repr(e))
        finally:
            cl.close()

    t = threading.Thread(target=traffic)
    t.start()
    try:
        assert c.get_model_metadata("add_sub")["versions"] == ["1"]
        _save(add_sub_model(), os.path.join(repo, "add_sub", "2", "model.onnx"))
        wait_until(lambda: c.is_model_ready("add_sub", "2"), what="version 2 to load")
        # an edited config is picked up (and the old version keeps serving until the swap)
        cfg_path = os.path.join(repo, "add_sub", "config.pbtxt")
        with open(cfg_path) as f:
            text = f.read()
        with open(cfg_path, "w") as f:
            f.write(text.replace("max_batch_size: 8", "max_batch_size: 6"))
        wait_until(lambda: c.get_model_config("add_sub")["max_batch_size"] == 6, what="the edited config")
        shutil.rmtree(os.path.join(repo, "classifier"))
        wait_until(lambda: not c.is_model_ready("classifier"), what="classifier to unload")
        n = len(done)
        wait_until(lambda: len(done) > n + 5, what="more traffic")
    finally:
        stop.set()
        t.join()
        c.close()
    assert not failures, failures[:3]
    assert done


def test_sigterm_finishes_requests_in_flight(test_repo, server_factory):
    srv = server_factory(test_repo[0], "--model-control-mode", "explicit", "--load-model", "sleepy", "--load-model", "add_sub")
    c = th.InferenceServerClient(srv.http, concurrency=2)
    try:
        i = th.InferInput("X", [1], "FP32")
        i.set_data_from_numpy(np.array([1.0], np.float32))
        pending = c.async_infer("sleepy", [i])
        wait_until(lambda: c.get_inference_statistics("sleepy")["model_stats"][0]["inference_stats"]["queue"]["count"] >= 0
                   and _pending(srv) >= 1, what="the request to be in flight")
        srv.proc.send_signal(signal.SIGTERM)
        r = pending.get_result()
        assert r.as_numpy("Y")[0] == 1.0
        assert srv.proc.wait(60) == 0
    finally:
        c.close()


def _pending(srv) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{srv.metrics}/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "nv_inference_pending_request_count" and s.labels.get("model") == "sleepy":
                return s.value
    return 0
