"""One error table for both protocols: every tuili error class gets the same status from the
HTTP and the gRPC adapter, and a real server answers a failed load alike over both."""
from __future__ import annotations

import inspect
import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

import tuili.errors
from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.dtypes import UnknownDTypeError
from tuili.serve import errors as E
from tuili.serve import grpc_server, http_server

# The HTTP status each gRPC code stands for (Google's API design guide), but for 413, which gRPC
# has no closer code for than RESOURCE_EXHAUSTED (its own answer to an oversized message).
SAME_MEANING = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    504: "DEADLINE_EXCEEDED",
    408: "DEADLINE_EXCEEDED",  # a body that stalled: gRPC frames its own, so only HTTP answers this
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}

TUILI_ERRORS = [c for _, c in inspect.getmembers(tuili.errors, inspect.isclass) if issubclass(c, tuili.errors.TuiliError)]
SERVE_ERRORS = [E.RequestTooLargeError, E.RequestTimeoutError, UnknownDTypeError]


def test_every_tuili_error_class_has_its_own_row():
    """A new class in tuili.errors must be given a status on purpose, not inherit one by accident."""
    assert len(TUILI_ERRORS) >= 10
    missing = [c.__name__ for c in TUILI_ERRORS if c not in E.STATUS]
    assert not missing, f"add these to tuili.serve.errors.STATUS: {missing}"


@pytest.mark.parametrize("cls", TUILI_ERRORS + SERVE_ERRORS + [ValueError], ids=lambda c: c.__name__)
def test_both_adapters_give_the_same_status(cls):
    exc = cls("boom at node n1")
    r = http_server.error_response(exc)
    code = grpc_server.status_for(exc)
    assert SAME_MEANING[r.status_code] == code.name, f"{cls.__name__}: HTTP {r.status_code} but gRPC {code.name}"
    assert (r.status_code, code.name) == (E.status_of(exc).http, E.status_of(exc).grpc)
    # a busy server or a restarting worker tells HTTP clients when to come back
    busy = issubclass(cls, (tuili.errors.ServerBusyError, tuili.errors.WorkerDiedError))
    assert (r.headers.get("retry-after") == "1") == busy
    body = json.loads(r.body)
    assert body == {"error": E.message_of(exc)}
    if issubclass(cls, tuili.errors.TuiliError):
        assert body["error"] == "boom at node n1"
    else:  # a bug: 500 / INTERNAL, named as one
        assert (r.status_code, code) == (500, grpc.StatusCode.INTERNAL)
        assert body["error"] == "internal error: ValueError: boom at node n1"


@pytest.mark.parametrize("cls, http, code", [
    (tuili.errors.ModelLoadError, 400, "INVALID_ARGUMENT"),  # gRPC said INTERNAL before the table
    (tuili.errors.InvalidInputError, 400, "INVALID_ARGUMENT"),
    (UnknownDTypeError, 400, "INVALID_ARGUMENT"),
    (tuili.errors.ConfigError, 400, "INVALID_ARGUMENT"),
    (tuili.errors.ModelNotFoundError, 404, "NOT_FOUND"),
    (E.RequestTooLargeError, 413, "RESOURCE_EXHAUSTED"),
    (tuili.errors.UnsupportedOpError, 501, "UNIMPLEMENTED"),
    (tuili.errors.ServerBusyError, 503, "UNAVAILABLE"),
    (tuili.errors.KernelError, 500, "INTERNAL"),
    (tuili.errors.TuiliError, 500, "INTERNAL"),
])
def test_status_of_the_main_classes(cls, http, code):
    assert (E.status_of(cls("x")).http, E.status_of(cls("x")).grpc) == (http, code)


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory, server_factory):
    """Explicit mode; ``corrupt`` is not an ONNX file, ``unsupported`` uses an op tuili has no kernel for."""
    root = tmp_path_factory.mktemp("broken_repo")
    _save(add_sub_model(), str(root / "add_sub" / "1" / "model.onnx"))
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    _write(str(root / "corrupt" / "config.pbtxt"), 'name: "corrupt"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "unsupported", [x], [y])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(root / "unsupported" / "1" / "model.onnx"))
    _write(str(root / "unsupported" / "config.pbtxt"), 'name: "unsupported"\nbackend: "tuili"\nmax_batch_size: 8\n')
    s = server_factory(str(root), "--model-control-mode", "explicit", "--load-model", "add_sub")
    yield s
    s.stop()


@pytest.mark.parametrize("model, http, code, word", [
    ("corrupt", "400", "INVALID_ARGUMENT", "corrupt"),  # ModelLoadError
    ("unsupported", "501", "UNIMPLEMENTED", "NoSuchOp"),  # UnsupportedOpError
    ("no_such_model", "404", "NOT_FOUND", "no_such_model"),  # ModelNotFoundError
])
def test_failed_loads_answer_alike_over_http_and_grpc(broken_server, model, http, code, word):
    hc = th.InferenceServerClient(broken_server.http)
    gc = tg.InferenceServerClient(broken_server.grpc)
    try:
        with pytest.raises(InferenceServerException) as he:
            hc.load_model(model)
        with pytest.raises(InferenceServerException) as ge:
            gc.load_model(model)
        assert (he.value.status(), ge.value.status()) == (http, f"StatusCode.{code}")
        assert word in he.value.message() and he.value.message() == ge.value.message()
        # the server goes on serving
        a = np.ones((1, 16), np.float32)
        ins = [th.InferInput("INPUT0", [1, 16], "FP32"), th.InferInput("INPUT1", [1, 16], "FP32")]
        for i in ins:
            i.set_data_from_numpy(a)
        np.testing.assert_array_equal(hc.infer("add_sub", ins).as_numpy("OUTPUT0"), 2 * a)
    finally:
        hc.close()
        gc.close()
