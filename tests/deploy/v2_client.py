"""One tritonclient script, run unchanged against `tuili serve` and the Ray ingress: health, metadata,
config, binary and JSON inference, and the errors clients match on."""
from __future__ import annotations

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "add_sub"  # tests/serve/repo_builder.add_sub_model(): OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, [N, 16]


def add_sub_inputs(x: np.ndarray, y: np.ndarray, binary: bool = True) -> list:
    inputs = [httpclient.InferInput("INPUT0", list(x.shape), "FP32"), httpclient.InferInput("INPUT1", list(y.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    inputs[1].set_data_from_numpy(y, binary_data=binary)
    return inputs


def check_v2(url: str) -> dict:
    """Raises AssertionError on the first difference from the V2 protocol; returns what it saw."""
    c = httpclient.InferenceServerClient(url, network_timeout=60, connection_timeout=10)
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready(MODEL)
        md = c.get_model_metadata(MODEL)
        assert [i["name"] for i in md["inputs"]] == ["INPUT0", "INPUT1"], md
        assert md["inputs"][0]["datatype"] == "FP32" and md["inputs"][0]["shape"] == [-1, 16], md
        cfg = c.get_model_config(MODEL)
        assert cfg["name"] == MODEL and cfg["max_batch_size"] > 0, cfg
        rng = np.random.default_rng(0)
        for batch, binary in ((1, True), (3, False)):
            x = rng.standard_normal((batch, 16)).astype(np.float32)
            y = rng.standard_normal((batch, 16)).astype(np.float32)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
            r = c.infer(MODEL, add_sub_inputs(x, y, binary), outputs=outputs, request_id=f"r{batch}")
            assert r.get_response()["id"] == f"r{batch}"
            np.testing.assert_allclose(r.as_numpy("OUTPUT0"), x + y, rtol=1e-6)
            np.testing.assert_allclose(r.as_numpy("OUTPUT1"), x - y, rtol=1e-6)
        errors = {}
        for what, call in (("unknown model", lambda: c.infer("no_such_model", add_sub_inputs(x, y))),
                           ("bad shape", lambda: c.infer(MODEL, add_sub_inputs(x[:, :8], y[:, :8])))):
            try:
                call()
            except InferenceServerException as e:
                errors[what] = (e.status(), e.message())
            else:
                raise AssertionError(f"{what}: no error")
        assert errors["unknown model"][1].startswith("Request for unknown model: 'no_such_model'"), errors
        assert str(errors["bad shape"][0]) == "400", errors
        assert c.is_server_live()
        return {"metadata": md, "errors": errors}
    finally:
        c.close()


def check_v2_grpc(url: str) -> dict:
    """The same checks over gRPC (tritonclient.grpc)."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    try:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
        md = c.get_model_metadata(MODEL, as_json=True)
        assert [i["name"] for i in md["inputs"]] == ["INPUT0", "INPUT1"], md
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, 16)).astype(np.float32)
        y = rng.standard_normal((2, 16)).astype(np.float32)
        inputs = [grpcclient.InferInput("INPUT0", [2, 16], "FP32"), grpcclient.InferInput("INPUT1", [2, 16], "FP32")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(y)
        r = c.infer(MODEL, inputs, client_timeout=60)
        np.testing.assert_allclose(r.as_numpy("OUTPUT0"), x + y, rtol=1e-6)
        np.testing.assert_allclose(r.as_numpy("OUTPUT1"), x - y, rtol=1e-6)
        try:
            c.infer("no_such_model", inputs, client_timeout=60)
        except InferenceServerException as e:
            error = (e.status(), e.message())
        else:
            raise AssertionError("unknown model: no error")
        assert error[1].startswith("Request for unknown model: 'no_such_model'"), error
        return {"unknown model": error}
    finally:
        c.close()
