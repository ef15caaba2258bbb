"""`tuili serve` as a Triton drop-in: Triton's server flags accepted where they mean something
(server name, strict readiness, strict model config, exit on error, verbose logging, body
timeout) and refused by name where they do not; checked on real servers."""
from __future__ import annotations

import os
import socket

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.cli import build_parser
from tuili.serve import grpc_server as G


def make_repo(root: str) -> str:
    _save(add_sub_model(16), f"{root}/add_sub/1/model.onnx")
    _write(f"{root}/add_sub/config.pbtxt", """
        name: "add_sub"
        backend: "onnxruntime"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
    """)
    _save(add_sub_model(16), f"{root}/auto/1/model.onnx")  # no config.pbtxt: completed from the model
    _write(f"{root}/broken/1/model.onnx", "this is not an onnx model")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(str(tmp_path_factory.mktemp("cli_repo")))


def parse(*argv):
    return build_parser().parse_args(["serve", "--model-store", "/tmp", *argv])


# --------------------------------------------------------------------------- the flags
def test_triton_flags_are_accepted_in_tritons_forms():
    a = parse("--strict-readiness=false", "--exit-on-error", "--log-verbose=1", "--id", "triton", "--allow-grpc", "false",
              "--exit-timeout-secs", "3", "--strict-model-config=true")
    assert (a.strict_readiness, a.exit_on_error, a.log_verbose, a.server_name, a.allow_grpc) == (False, True, 1, "triton", False)
    assert (a.shutdown_grace_secs, a.strict_model_config, a.model_repository) == (3.0, True, ["/tmp"])
    d = parse()
    assert (d.strict_readiness, d.exit_on_error, d.strict_model_config, d.server_name) == (True, False, False, "tuili")
    assert parse("--disable-auto-complete-config").strict_model_config


@pytest.mark.parametrize("flag", ["--backend-directory=/opt/b", "--trace-level", "--response-cache-byte-size=1024",
                                  "--grpc-use-ssl=true", "--log-file=/tmp/x", "--http-address=0.0.0.0"])
def test_triton_flags_without_meaning_here_are_refused_by_name(flag, capsys):
    with pytest.raises(SystemExit):
        parse(flag)
    err = capsys.readouterr().err
    assert f"{flag.split('=')[0]} is a Triton flag tuili does not implement" in err


@pytest.mark.parametrize("argv", [["--strict-readiness=maybe"], ["--log-verbose=-1"], ["--body-timeout-secs=0"]])
def test_bad_flag_values_are_errors(argv, capsys):
    with pytest.raises(SystemExit):
        parse(*argv)
    assert argv[0].split("=")[0] in capsys.readouterr().err


# --------------------------------------------------------------------------- on real servers
def health(srv) -> int:
    with grpc.insecure_channel(srv.grpc) as ch:
        data = ch.unary_unary(f"/{G.HEALTH_SERVICE_NAME}/Check")(G.HealthCheckRequest().SerializeToString(), timeout=10)
    return G.HealthCheckResponse.FromString(data).status


def test_name_verbose_logging_body_timeout_and_strict_readiness(repo, server_factory):
    srv = server_factory(repo, "--server-name", "triton", "--body-timeout-secs", "1", "--log-verbose=1",
                         "--model-control-mode", "explicit", "--load-model", "add_sub")
    http = httpx.Client(base_url=f"http://{srv.http}", timeout=30)
    tc = tg.InferenceServerClient(srv.grpc)
    try:
        assert http.get("/v2").json()["name"] == "triton" and tc.get_server_metadata().name == "triton"
        # a body that never finishes: 408 after --body-timeout-secs, and the connection is closed
        with socket.create_connection(tuple(srv.http.split(":")), timeout=30) as s:
            s.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inputs\"")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
        # strict readiness: ready while every model asked for is; a failed load makes it not ready
        assert http.get("/v2/health/ready").status_code == 200 and health(srv) == G.SERVING
        r = http.post("/v2/repository/models/broken/load")
        assert r.status_code == 400 and r.json()["error"].startswith("failed to load 'broken'")
        assert http.get("/v2/health/ready").status_code == 503 and not tc.is_server_ready()
        assert health(srv) == G.NOT_SERVING
        assert http.post("/v2/repository/models/broken/unload").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200 and health(srv) == G.SERVING
        a = np.ones((1, 16), np.float32)
        ins = [tg.InferInput("INPUT0", [1, 16], "FP32"), tg.InferInput("INPUT1", [1, 16], "FP32")]
        for i in ins:
            i.set_data_from_numpy(a)
        np.testing.assert_array_equal(tc.infer("add_sub", ins).as_numpy("OUTPUT0"), a + a)
    finally:
        http.close()
        tc.close()
    log = srv.log()
    srv.stop()
    assert "HTTP POST /v2/models/add_sub/infer -> 408" in log and "gRPC ModelInfer -> OK" in log


def test_strict_model_config_without_strict_readiness(repo, server_factory):
    srv = server_factory(repo, "--strict-model-config", "--strict-readiness=false")
    with httpx.Client(base_url=f"http://{srv.http}", timeout=30) as http:
        assert http.get("/v2/health/ready").status_code == 200  # broken and auto are down, readiness not strict
        index = {m["name"]: m for m in http.post("/v2/repository/index").json()}
        assert index["add_sub"]["state"] == "READY"
        assert index["auto"]["state"] == "UNAVAILABLE" and "--strict-model-config" in index["auto"]["reason"]
    srv.stop()


def test_exit_on_error_names_the_models_that_failed(repo, server_factory):
    with pytest.raises(RuntimeError) as e:
        server_factory(repo, "--exit-on-error")
    assert "--exit-on-error: model(s) broken failed to load" in str(e.value)


def test_strict_readiness_by_default(repo, server_factory):
    srv = server_factory(repo)
    with httpx.Client(base_url=f"http://{srv.http}", timeout=30) as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 503  # broken did not load
        assert http.get("/v2/models/add_sub/ready").status_code == 200
    srv.stop()
    assert os.path.exists(repo)


def test_queue_default_is_the_schedulers():
    from tuili.serve.scheduler import DEFAULT_MAX_QUEUE_SIZE
    from tuili.serve.server import ServeOptions

    assert ServeOptions.max_queue_size == DEFAULT_MAX_QUEUE_SIZE == 256  # the help text of --max-queue-size says 256
