"""gRPC protocol: the server's methods are Triton's, message conversion, and a real
`tuili serve` process driven with the unmodified official tritonclient.grpc."""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from tuili.errors import InvalidInputError
from tuili.model_config.protos import service_pb2 as pb
from tuili.serve import grpc_server as G
from tuili.serve.types import InferOutput, InferResponse, serialize_bytes_tensor

tc_grpc = pytest.importorskip("tritonclient.grpc")
tc_service = pytest.importorskip("tritonclient.grpc.service_pb2")
from tritonclient.utils import InferenceServerException  # noqa: E402

ALL_DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def sample(datatype: str, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        flat = np.array([f"s{i}-é".encode() for i in range(int(np.prod(shape)))], dtype=object)
        return flat.reshape(shape)
    dt = np.dtype(ALL_DTYPES[datatype])
    if dt == np.bool_:
        return rng.random(shape) > 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return rng.standard_normal(shape).astype(dt)


# --------------------------------------------------------------------------- schema
def test_server_methods_are_tritons():
    """Every method the server registers is a method of Triton's GRPCInferenceService, with its
    request and response types and streaming kind."""
    theirs = tc_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert theirs.full_name == G.SERVICE_NAME
    for name, (req_t, resp_t, kind) in G._METHODS.items():
        m = theirs.methods_by_name[name]
        assert (m.input_type, m.output_type) == (req_t.DESCRIPTOR, resp_t.DESCRIPTOR)
        assert m.server_streaming == (kind == "stream")


# --------------------------------------------------------------------------- conversions
def client_request(inputs: dict[str, np.ndarray], datatypes: dict[str, str], outputs=(), class_count=0,
                   model="m") -> pb.ModelInferRequest:
    """Build the request bytes exactly as tritonclient does, then parse them with our schema."""
    ins = []
    for name, arr in inputs.items():
        i = tc_grpc.InferInput(name, list(arr.shape), datatypes[name])
        i.set_data_from_numpy(arr)
        ins.append(i)
    outs = [tc_grpc.InferRequestedOutput(o, class_count=class_count) for o in outputs]
    from tritonclient.grpc._utils import _get_inference_request
    req = _get_inference_request(model_name=model, inputs=ins, model_version="", request_id="r7", outputs=outs,
                                 sequence_id=0, sequence_start=False, sequence_end=False, priority=0,
                                 timeout=None, parameters=None)
    return pb.ModelInferRequest.FromString(req.SerializeToString())


@pytest.mark.parametrize("datatype", [*ALL_DTYPES, "BYTES"])
def test_raw_inputs_of_every_datatype_decode(datatype):
    arr = sample(datatype, (2, 3))
    req = G.request_from_proto(client_request({"x": arr}, {"x": datatype}))
    (inp,) = req.inputs
    assert (req.model_name, req.id, inp.name, inp.datatype, inp.shape) == ("m", "r7", "x", datatype, [2, 3])
    assert inp.data.shape == (2, 3)
    if datatype == "BYTES":
        assert inp.data.tolist() == arr.tolist()
    else:
        assert inp.data.dtype == arr.dtype
        np.testing.assert_array_equal(inp.data, arr)


@pytest.mark.parametrize("datatype", [d for d in ALL_DTYPES if d != "FP16"] + ["BYTES"])
def test_typed_contents_decode(datatype):
    arr = sample(datatype, (3, 2), seed=1)
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype=datatype, shape=[3, 2])
    field = G._CONTENTS_FIELD[datatype]
    getattr(t.contents, field).extend(arr.ravel().tolist())
    (inp,) = G.request_from_proto(msg).inputs
    assert inp.data.tolist() == arr.tolist()
    if datatype != "BYTES":
        assert inp.data.dtype == arr.dtype


def test_requested_outputs_and_classification_parameter():
    req = G.request_from_proto(client_request({"x": np.zeros((1, 4), np.float32)}, {"x": "FP32"},
                                              outputs=["y"], class_count=3))
    assert [o.name for o in req.outputs] == ["y"]
    assert req.outputs[0].parameters["classification"] == 3
    no_outputs = G.request_from_proto(client_request({"x": np.zeros((1, 4), np.float32)}, {"x": "FP32"}))
    assert no_outputs.outputs is None


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda m: m.raw_input_contents.__setitem__(0, m.raw_input_contents[0][:-4]), ["'x'", "44 bytes", "48"]),
        (lambda m: m.raw_input_contents.append(b"\0" * 4), ["2 raw_input_contents", "1 inputs"]),
        (lambda m: m.inputs[0].__setattr__("datatype", "FLOAT"), ["FLOAT"]),
        (lambda m: m.inputs[0].shape.__setitem__(1, -4), ["negative"]),
        (lambda m: m.__setattr__("model_name", ""), ["model_name"]),
        (lambda m: m.inputs[0].contents.fp32_contents.append(1.0), ["both"]),
    ],
)
def test_malformed_requests_are_invalid_input(mutate, words):
    msg = client_request({"x": np.ones((3, 4), np.float32)}, {"x": "FP32"})
    mutate(msg)
    with pytest.raises(InvalidInputError) as ei:
        G.request_from_proto(msg)
    for w in words:
        assert w in str(ei.value)
    assert G.status_for(ei.value).name == "INVALID_ARGUMENT"


def test_malformed_bytes_and_typed_contents():
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="s", datatype="BYTES", shape=[2])
    msg.raw_input_contents.append(serialize_bytes_tensor(np.array([b"abc"], dtype=object)))
    with pytest.raises(InvalidInputError, match="'s'.*1 elements.*needs 2"):
        G.request_from_proto(msg)
    msg.raw_input_contents[0] = (10).to_bytes(4, "little") + b"abc"
    with pytest.raises(InvalidInputError, match="declares 10 bytes"):
        G.request_from_proto(msg)
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    t.contents.fp32_contents.extend([1, 2, 3])
    with pytest.raises(InvalidInputError, match="holds 3 values but shape \\[2, 2\\] needs 4"):
        G.request_from_proto(msg)
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="x", datatype="FP32", shape=[2])
    with pytest.raises(InvalidInputError, match="no data"):
        G.request_from_proto(msg)
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="h", datatype="FP16", shape=[1])
    t.contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInputError, match="raw_input_contents"):
        G.request_from_proto(msg)


def test_response_decodes_in_tritonclient():
    outs = {dt: sample(dt, (2, 2), seed=3) for dt in [*ALL_DTYPES, "BYTES"]}
    resp = InferResponse("m", "1", "abc", [InferOutput(f"o_{dt}", dt, [2, 2], a) for dt, a in outs.items()],
                         parameters={"flag": True, "n": 3})
    msg = G.response_to_proto(resp)
    theirs = tc_service.ModelInferResponse.FromString(msg.SerializeToString())
    result = tc_grpc.InferResult(theirs)
    for dt, arr in outs.items():
        got = result.as_numpy(f"o_{dt}")
        assert got.shape == (2, 2)
        if dt == "BYTES":
            assert got.tolist() == arr.tolist()
        else:
            np.testing.assert_array_equal(got, arr)
            assert got.dtype == arr.dtype
    assert theirs.id == "abc" and theirs.parameters["n"].int64_param == 3 and theirs.parameters["flag"].bool_param


# =========================================================================== a real `tuili serve`

ADD_SUB_CONFIG = """\
name: "add_sub"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""
LABELS = ["zero", "one", "two", "three"]


def make_repository(root) -> None:
    """add_sub: two FP32 inputs -> sum and difference (with labels on the sum);
    strings: BYTES identity with no config.pbtxt (auto-completed)."""
    import onnx
    from onnx import TensorProto, helper

    def save(graph, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)

    f32 = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4])  # noqa: E731
    save(helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "add_sub", [f32("INPUT0"), f32("INPUT1")], [f32("OUTPUT0"), f32("OUTPUT1")]),
        os.path.join(root, "add_sub", "1", "model.onnx"))
    with open(os.path.join(root, "add_sub", "config.pbtxt"), "w") as f:
        f.write(ADD_SUB_CONFIG)
    with open(os.path.join(root, "add_sub", "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    s = lambda n: helper.make_tensor_value_info(n, TensorProto.STRING, ["N", -1])  # noqa: E731
    save(helper.make_graph([helper.make_node("Identity", ["IN"], ["OUT"])], "strings", [s("IN")], [s("OUT")]),
         os.path.join(root, "strings", "1", "model.onnx"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, server_factory):
    """A real `tuili serve` (conftest's ServerProcess: ephemeral ports on 127.0.0.1), explicit
    model control so the repository API can load/unload; stopped with SIGTERM at the end."""
    repo = tmp_path_factory.mktemp("grpc_repo") / "models"
    make_repository(str(repo))
    proc = server_factory(str(repo), "--model-control-mode", "explicit", "--load-model", "*",
                          "--shutdown-grace-secs", "5")
    proc.grpc_url = proc.grpc
    yield proc
    code = proc.stop()
    assert code == 0, f"tuili serve did not shut down cleanly ({code}):\n{proc.log()}"


@pytest.fixture
def client(server):
    c = tc_grpc.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def add_sub_inputs(a: np.ndarray, b: np.ndarray, datatype="FP32"):
    i0 = tc_grpc.InferInput("INPUT0", list(a.shape), datatype)
    i0.set_data_from_numpy(a)
    i1 = tc_grpc.InferInput("INPUT1", list(b.shape), datatype)
    i1.set_data_from_numpy(b)
    return [i0, i1]


def assert_healthy(c):
    assert c.is_server_live() and c.is_server_ready()
    a = np.full((1, 4), 2, np.float32)
    r = c.infer("add_sub", add_sub_inputs(a, a))
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + a)


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as ei:
        call()
    return ei.value.status(), ei.value.message()


def test_health_and_readiness(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "9")
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(client):
    md = client.get_server_metadata(as_json=True)
    assert md["name"] and md["version"]
    assert "classification" in md["extensions"] and "model_repository" in md["extensions"]


def test_model_metadata(client):
    md = client.get_model_metadata("add_sub")
    assert md.name == "add_sub" and list(md.versions) == ["1"] and md.platform
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [
        ("INPUT0", "FP32", [-1, 4]), ("INPUT1", "FP32", [-1, 4])]
    assert [t.name for t in md.outputs] == ["OUTPUT0", "OUTPUT1"]
    code, msg = status_of(lambda: client.get_model_metadata("no_such_model"))
    assert code == "StatusCode.NOT_FOUND" and "no_such_model" in msg


def test_model_config(client):
    cfg = client.get_model_config("add_sub").config
    assert cfg.name == "add_sub" and cfg.max_batch_size == 8
    assert [t.name for t in cfg.input] == ["INPUT0", "INPUT1"] and list(cfg.input[0].dims) == [4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.output[0].label_filename == "labels.txt"
    # the auto-completed config of the model without config.pbtxt
    auto = client.get_model_config("strings", as_json=True)["config"]
    assert auto["input"][0]["name"] == "IN" and auto["input"][0]["data_type"] == "TYPE_STRING"
    code, _ = status_of(lambda: client.get_model_config("no_such_model"))
    assert code == "StatusCode.NOT_FOUND"


def test_infer_raw_tensors(client):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    r = client.infer("add_sub", add_sub_inputs(a, b), request_id="req-42")
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(r.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    resp = r.get_response()
    assert resp.id == "req-42" and resp.model_name == "add_sub" and resp.model_version == "1"
    # only the requested output comes back
    r = client.infer("add_sub", add_sub_inputs(a, b), outputs=[tc_grpc.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in r.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_allclose(r.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    # explicit version
    r = client.infer("add_sub", add_sub_inputs(a, b), model_version="1")
    np.testing.assert_allclose(r.as_numpy("OUTPUT0"), a + b, rtol=1e-6)


def test_infer_typed_contents(server):
    """Typed InferTensorContents (not raw), sent with tritonclient's own generated stub."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    req = tc_service.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        t = req.inputs.add(name=name, datatype="FP32", shape=[2, 4])
        t.contents.fp32_contents.extend(a.ravel().tolist())
    with grpc.insecure_channel(server.grpc_url) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    out = tc_grpc.InferResult(resp)
    np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), a + a)
    np.testing.assert_array_equal(out.as_numpy("OUTPUT1"), np.zeros_like(a))


def test_classification_extension(client):
    a = np.array([[0.5, 3.0, 1.0, -2.0], [4.0, 0.0, 0.0, 9.0]], np.float32)
    zero = np.zeros_like(a)
    r = client.infer("add_sub", add_sub_inputs(a, zero),
                     outputs=[tc_grpc.InferRequestedOutput("OUTPUT0", class_count=2)])
    got = r.as_numpy("OUTPUT0")
    assert got.shape == (2, 2)
    for row, vals in zip(got, a):
        top = np.argsort(-vals)[:2]
        parts = [x.decode().split(":") for x in row]
        assert [int(p[1]) for p in parts] == top.tolist()
        assert [float(p[0]) for p in parts] == pytest.approx(vals[top].tolist())
        assert [p[2] for p in parts] == [LABELS[i] for i in top]


def test_bytes_tensors_round_trip(client):
    data = np.array([[b"hello", b"", "wörld".encode()], [b"a\x00b", b"x" * 300, b"z"]], dtype=object)
    i = tc_grpc.InferInput("IN", [2, 3], "BYTES")
    i.set_data_from_numpy(data)
    r = client.infer("strings", [i])
    out = r.as_numpy("OUT")
    assert out.shape == (2, 3)
    assert out.tolist() == data.tolist()


def test_concurrent_requests_of_different_batch_sizes(client, server):
    """Requests from many threads (batched together by the server) each get their own answer."""
    results, errors = {}, []

    def work(k):
        try:
            c = tc_grpc.InferenceServerClient(server.grpc_url)
            n = 1 + k % 3
            a = np.full((n, 4), k, np.float32)
            b = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
            r = c.infer("add_sub", add_sub_inputs(a, b), request_id=str(k))
            results[k] = (r.as_numpy("OUTPUT0"), a + b, r.get_response().id)
            c.close()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 12
    for k, (got, want, rid) in results.items():
        np.testing.assert_array_equal(got, want)
        assert rid == str(k)


def test_async_infer(client):
    done = threading.Event()
    box = {}

    def cb(result, error):
        box["result"], box["error"] = result, error
        done.set()

    a = np.ones((2, 4), np.float32)
    client.async_infer("add_sub", add_sub_inputs(a, a), cb)
    assert done.wait(30)
    assert box["error"] is None
    np.testing.assert_array_equal(box["result"].as_numpy("OUTPUT0"), a + a)


def test_stream_infer_answers_each_request_and_survives_a_bad_one(client):
    got = []
    lock = threading.Lock()
    finished = threading.Event()

    def cb(result, error):
        with lock:
            got.append((result, error))
            if len(got) == 4:
                finished.set()

    client.start_stream(callback=cb)
    try:
        for k in range(3):
            a = np.full((1, 4), k, np.float32)
            client.async_stream_infer("add_sub", add_sub_inputs(a, a), request_id=f"s{k}")
        bad = tc_grpc.InferInput("INPUT0", [1, 4], "FP32")
        bad.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.async_stream_infer("add_sub", [bad], request_id="bad")  # INPUT1 missing
        assert finished.wait(30)
    finally:
        client.stop_stream()
    oks = {r.get_response().id: r.as_numpy("OUTPUT0") for r, e in got if e is None}
    assert sorted(oks) == ["s0", "s1", "s2"]
    for k in range(3):
        np.testing.assert_array_equal(oks[f"s{k}"], np.full((1, 4), 2 * k, np.float32))
    errs = [e for r, e in got if e is not None]
    assert len(errs) == 1 and "INPUT1" in str(errs[0])
    assert_healthy(client)


def test_statistics_count_inferences(client):
    def count():
        stats = client.get_inference_statistics("add_sub").model_stats
        assert [(s.name, s.version) for s in stats] == [("add_sub", "1")]
        return stats[0].inference_count, stats[0].inference_stats.success.count

    before_items, before_ok = count()
    a = np.ones((3, 4), np.float32)
    client.infer("add_sub", add_sub_inputs(a, a))
    after_items, after_ok = count()
    assert after_items == before_items + 3
    assert after_ok == before_ok + 1
    every = client.get_inference_statistics().model_stats
    assert {s.name for s in every} >= {"add_sub", "strings"}
    code, _ = status_of(lambda: client.get_inference_statistics("no_such_model"))
    assert code == "StatusCode.NOT_FOUND"


def test_repository_index_load_unload(client):
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["add_sub"].state == "READY" and index["add_sub"].version == "1"
    assert index["strings"].state == "READY"
    client.unload_model("strings")
    try:
        assert not client.is_model_ready("strings")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["strings"].state != "READY"
        code, _ = status_of(lambda: client.infer("strings", [tc_grpc.InferInput("IN", [1, 1], "BYTES")]))
        assert code in ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")
        # load with a config override (Triton's JSON form): batching off
        override = {"name": "strings", "backend": "onnxruntime", "max_batch_size": 0,
                    "input": [{"name": "IN", "data_type": "TYPE_STRING", "dims": [-1, -1]}],
                    "output": [{"name": "OUT", "data_type": "TYPE_STRING", "dims": [-1, -1]}]}
        client.load_model("strings", config=json.dumps(override))
        assert client.is_model_ready("strings")
        assert client.get_model_config("strings").config.max_batch_size == 0
    finally:
        client.load_model("strings")  # back to the auto-completed config
    assert client.is_model_ready("strings")
    assert client.get_model_config("strings").config.max_batch_size > 0
    code, msg = status_of(lambda: client.load_model("no_such_model"))
    assert code == "StatusCode.NOT_FOUND" and "no_such_model" in msg
    code, msg = status_of(lambda: client.load_model("strings", config='{"name": "strings", "max_batch_size": -3}'))
    assert code == "StatusCode.INVALID_ARGUMENT" and "max_batch_size" in msg
    assert client.is_model_ready("strings")  # a failed reload leaves the serving version alone


# --------------------------------------------------------------------------- bad input
def test_bad_requests_get_the_right_status_and_the_server_stays_healthy(client, server):
    a = np.ones((2, 4), np.float32)
    cases = {
        "unknown model": (lambda: client.infer("no_such_model", add_sub_inputs(a, a)), "NOT_FOUND", "no_such_model"),
        "unknown version": (lambda: client.infer("add_sub", add_sub_inputs(a, a), model_version="7"),
                            "NOT_FOUND", "7"),
        "wrong shape": (lambda: client.infer("add_sub", add_sub_inputs(np.ones((2, 5), np.float32),
                                                                       np.ones((2, 5), np.float32))),
                        "INVALID_ARGUMENT", "INPUT0"),
        "wrong dtype": (lambda: client.infer("add_sub", add_sub_inputs(a.astype(np.float64), a.astype(np.float64),
                                                                       "FP64")), "INVALID_ARGUMENT", "FP64"),
        "missing input": (lambda: client.infer("add_sub", add_sub_inputs(a, a)[:1]), "INVALID_ARGUMENT", "INPUT1"),
        "unknown input": (lambda: client.infer("add_sub", [*add_sub_inputs(a, a), _named("EXTRA", a)]),
                          "INVALID_ARGUMENT", "EXTRA"),
        "batch too large": (lambda: client.infer("add_sub", add_sub_inputs(np.ones((9, 4), np.float32),
                                                                           np.ones((9, 4), np.float32))),
                            "INVALID_ARGUMENT", "8"),
        "unknown output": (lambda: client.infer("add_sub", add_sub_inputs(a, a),
                                                outputs=[tc_grpc.InferRequestedOutput("NOPE")]),
                           "INVALID_ARGUMENT", "NOPE"),
    }
    for what, (call, code, word) in cases.items():
        got_code, msg = status_of(call)
        assert got_code == f"StatusCode.{code}", f"{what}: {got_code} {msg}"
        assert word in msg, f"{what}: {msg}"
    assert_healthy(client)


def _named(name, arr):
    i = tc_grpc.InferInput(name, list(arr.shape), "FP32")
    i.set_data_from_numpy(arr)
    return i


def test_raw_content_size_mismatch_is_invalid_argument(client, server):
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    def call(req):
        with grpc.insecure_channel(server.grpc_url) as ch:
            service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)

    good = np.ones((2, 4), np.float32).tobytes()
    cases = [
        ("short raw", [good[:-4], good], "INPUT0"),
        ("long raw", [good, good + b"\0\0\0\0"], "INPUT1"),
        ("raw count", [good], "raw_input_contents"),
    ]
    for what, raws, word in cases:
        req = tc_service.ModelInferRequest(model_name="add_sub")
        for name in ("INPUT0", "INPUT1"):
            req.inputs.add(name=name, datatype="FP32", shape=[2, 4])
        req.raw_input_contents.extend(raws)
        with pytest.raises(grpc.RpcError) as ei:
            call(req)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        assert word in ei.value.details(), f"{what}: {ei.value.details()}"
    # a BYTES tensor whose length prefixes disagree with the data
    req = tc_service.ModelInferRequest(model_name="strings")
    req.inputs.add(name="IN", datatype="BYTES", shape=[1, 2])
    req.raw_input_contents.append((100).to_bytes(4, "little") + b"abc")
    with pytest.raises(grpc.RpcError) as ei:
        call(req)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "IN" in ei.value.details()
    assert_healthy(client)


def test_large_messages_pass_in_both_directions(client):
    """Beyond gRPC's default 4 MiB limit: a 6 MiB BYTES element goes in and comes back."""
    big = np.array([[b"\x01" * (6 * 1024 * 1024)]], dtype=object)
    i = tc_grpc.InferInput("IN", [1, 1], "BYTES")
    i.set_data_from_numpy(big)
    out = client.infer("strings", [i]).as_numpy("OUT")
    assert out.shape == (1, 1) and out[0, 0] == big[0, 0]


def test_bad_requests_do_not_disturb_concurrent_good_ones(server):
    good, bad, errors = [], [], []

    def work(k):
        c = tc_grpc.InferenceServerClient(server.grpc_url)
        try:
            a = np.full((1 + k % 2, 4), k, np.float32)
            if k % 3 == 0:  # malformed: wrong width
                w = np.ones((1, 3), np.float32)
                try:
                    c.infer("add_sub", add_sub_inputs(w, w))
                    errors.append(f"request {k} should have failed")
                except InferenceServerException as e:
                    bad.append(e.status())
            else:
                r = c.infer("add_sub", add_sub_inputs(a, a))
                good.append(np.array_equal(r.as_numpy("OUTPUT0"), a + a))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(18)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert good == [True] * 12
    assert bad == ["StatusCode.INVALID_ARGUMENT"] * 6


# --------------------------------------------------------------------------- hardened input, Triton drop-in (issue 11)
def _raw_call(server, method, data: bytes, service=G.SERVICE_NAME):
    import grpc

    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.grpc_url, options=opts) as ch:
        return ch.unary_unary(f"/{service}/{method}")(data, timeout=60)


def test_undecodable_protobuf_is_invalid_argument(client, server):
    import grpc

    for method in ("ModelInfer", "ModelMetadata", "RepositoryIndex", "LogSettings"):
        with pytest.raises(grpc.RpcError) as ei:
            _raw_call(server, method, b"\xff\xff\xff\xff\x0f garbage")
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "not a valid inference." in ei.value.details()
    assert_healthy(client)


def test_messages_over_the_receive_limit_are_refused(client, server):
    import grpc

    req = tc_service.ModelInferRequest(model_name="strings")
    req.inputs.add(name="IN", datatype="BYTES", shape=[1, 1])
    req.raw_input_contents.append((65 << 20).to_bytes(4, "little") + b"\0" * (65 << 20))
    with pytest.raises(grpc.RpcError) as ei:
        _raw_call(server, "ModelInfer", req.SerializeToString())
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_healthy(client)


def test_bad_parameters_and_shapes_are_invalid_argument(client, server):
    import grpc

    def infer(mutate):
        req = tc_service.ModelInferRequest(model_name="add_sub")
        for name in ("INPUT0", "INPUT1"):
            req.inputs.add(name=name, datatype="FP32", shape=[1, 4])
            req.raw_input_contents.append(np.ones(4, np.float32).tobytes())
        mutate(req)
        with pytest.raises(grpc.RpcError) as ei:
            _raw_call(server, "ModelInfer", req.SerializeToString())
        return ei.value

    cases = [
        (lambda r: setattr(r.parameters["priority"], "double_param", float("inf")), "priority"),
        (lambda r: setattr(r.parameters["timeout"], "int64_param", -5), "timeout"),
        (lambda r: setattr(r.parameters["priority"], "string_param", "abc"), "priority"),
        (lambda r: setattr(r.outputs.add(name="OUTPUT0").parameters["classification"], "string_param", "abc"), "classification"),
        (lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([0, 2**62, 2**62])), "INPUT0"),
        (lambda r: setattr(r, "model_name", "m" * 100_000), "more characters"),
    ]
    for mutate, word in cases:
        e = infer(mutate)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT or (word == "more characters" and e.code() == grpc.StatusCode.NOT_FOUND)
        assert word in e.details() and len(e.details()) < 1100, e.details()
    assert_healthy(client)


def test_tritons_error_texts_start_the_messages(client):
    a = np.ones((1, 4), np.float32)
    _, msg = status_of(lambda: client.infer("no_such_model", add_sub_inputs(a, a)))
    assert msg.startswith("Request for unknown model: 'no_such_model' is not found; ")
    _, msg = status_of(lambda: client.load_model("no_such_model"))
    assert msg.startswith("failed to load 'no_such_model'")
    _, msg = status_of(lambda: client.load_model("strings", config='{"max_batch_size": -3}'))
    assert msg.startswith("failed to load 'strings': ")


def test_health_checking_service(server):
    import grpc

    req = G.HealthCheckRequest(service="").SerializeToString()
    resp = G.HealthCheckResponse.FromString(_raw_call(server, "Check", req, service=G.HEALTH_SERVICE_NAME))
    assert resp.status == G.SERVING
    req = G.HealthCheckRequest(service=G.SERVICE_NAME).SerializeToString()
    assert G.HealthCheckResponse.FromString(_raw_call(server, "Check", req, service=G.HEALTH_SERVICE_NAME)).status == G.SERVING
    with pytest.raises(grpc.RpcError) as ei:
        _raw_call(server, "Check", G.HealthCheckRequest(service="nope").SerializeToString(), service=G.HEALTH_SERVICE_NAME)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.grpc_url) as ch:
        stream = ch.unary_stream(f"/{G.HEALTH_SERVICE_NAME}/Watch")(req, timeout=30)
        assert G.HealthCheckResponse.FromString(next(stream)).status == G.SERVING
        stream.cancel()


def test_log_settings_over_grpc(client):
    before = client.get_log_settings(as_json=True)["settings"]
    assert before["log_verbose_level"]["uint32_param"] == 0 if "uint32_param" in before["log_verbose_level"] else True
    after = client.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"]
    assert after["log_verbose_level"]["uint32_param"] == 1
    code, msg = status_of(lambda: client.update_log_settings({"log_fancy": True}))
    assert code == "StatusCode.INVALID_ARGUMENT" and "log_fancy" in msg
    client.update_log_settings({"log_verbose_level": 0})
    assert_healthy(client)


def test_stream_survives_undecodable_messages(server):
    import grpc

    good = tc_service.ModelInferRequest(model_name="add_sub", id="good")
    for name in ("INPUT0", "INPUT1"):
        good.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        good.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    with grpc.insecure_channel(server.grpc_url) as ch:
        call = ch.stream_stream(f"/{G.SERVICE_NAME}/ModelStreamInfer", response_deserializer=pb.ModelStreamInferResponse.FromString)
        answers = list(call(iter([b"\xff\xff\xff", good.SerializeToString()]), timeout=30))
    errors = [a.error_message for a in answers if a.error_message]
    assert len(answers) == 2 and len(errors) == 1 and "not a valid" in errors[0]
    assert [a.infer_response.id for a in answers if not a.error_message] == ["good"]
