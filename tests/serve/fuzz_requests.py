"""Hostile requests for both protocols, as hypothesis strategies, and the repository they aim at.

Shared by tests/serve/test_fuzz.py (a few hundred requests in `make test`) and
benchmarks/fuzz_serve.py (tens of thousands). A request is a mix of valid and invalid parts: a
valid request with fields replaced by arbitrary JSON or protobuf values, huge or negative dims,
parameters of the wrong type, raw garbage, compression bombs, deep nesting. Whatever it is, the
server must answer with a 4xx / a client-error gRPC code and keep serving good requests.
"""
from __future__ import annotations

import gzip
import json
import os
import textwrap
import zlib

import numpy as np
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tests.serve.repo_builder import _save, add_sub_model

V2_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64", "BF16", "BYTES"]
MODELS = ["add_sub", "pair", "strings"]
INPUT_NAMES = ["INPUT0", "INPUT1", "ids", "mask", "IN"]
PARAM_KEYS = ["binary_data_size", "priority", "timeout", "classification", "class_count", "binary_data",
              "binary_data_output", "sequence_id", "sequence_start", "shared_memory_region", "custom"]
LONG_NAME = "m" * 100_000
# Client-error gRPC codes: everything else (INTERNAL, UNKNOWN, UNAVAILABLE, ...) is a failure.
GRPC_CLIENT_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE", "FAILED_PRECONDITION"}

PAIR_CONFIG = """
name: "pair"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "ids" data_type: TYPE_INT64 dims: [ -1 ] }, { name: "mask" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "sum" data_type: TYPE_INT64 dims: [ -1 ] } ]
"""

ADD_SUB_CONFIG = """
name: "add_sub"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] label_filename: "labels.txt" },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching { }
"""


def build_fuzz_repository(root: str) -> None:
    """add_sub (two FP32 [-1, 16] inputs, batching, labels), pair (a BERT-like pair of INT64 inputs
    declared [batch, seq]: their lengths must agree) and strings (BYTES identity)."""
    _save(add_sub_model(16), os.path.join(root, "add_sub", "1", "model.onnx"))
    with open(os.path.join(root, "add_sub", "config.pbtxt"), "w") as f:
        f.write(textwrap.dedent(ADD_SUB_CONFIG))
    with open(os.path.join(root, "add_sub", "labels.txt"), "w") as f:
        f.write("\n".join(f"label{i}" for i in range(16)) + "\n")
    ids, mask, out = (helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("ids", "mask", "sum"))
    pair = helper.make_model(helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["sum"])], "pair", [ids, mask], [out]),
                             opset_imports=[helper.make_opsetid("", 17)])
    _save(pair, os.path.join(root, "pair", "1", "model.onnx"))
    with open(os.path.join(root, "pair", "config.pbtxt"), "w") as f:
        f.write(textwrap.dedent(PAIR_CONFIG))
    s = lambda n: helper.make_tensor_value_info(n, TensorProto.STRING, ["N", -1])  # noqa: E731
    strings = helper.make_model(helper.make_graph([helper.make_node("Identity", ["IN"], ["OUT"])], "strings", [s("IN")], [s("OUT")]),
                                opset_imports=[helper.make_opsetid("", 17)])
    _save(strings, os.path.join(root, "strings", "1", "model.onnx"))


# --------------------------------------------------------------------------- values
def json_values(max_leaves: int = 12):
    scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12))
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                        max_leaves=max_leaves)


dims = st.one_of(st.integers(0, 20), st.integers(-3, -1), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 + 1]))
shapes = st.lists(dims, max_size=5) | st.lists(st.integers(0, 2), min_size=60, max_size=70)


def maybe(strategy, other=None):
    """Mostly ``strategy``, sometimes anything (``other``, by default arbitrary JSON)."""
    return st.one_of(strategy, strategy, strategy, other if other is not None else json_values())


def parameters():
    return st.dictionaries(st.sampled_from(PARAM_KEYS), json_values(4) | st.integers(-2**65, 2**65), max_size=3)


@st.composite
def json_input(draw):
    name = draw(maybe(st.sampled_from(INPUT_NAMES)))
    datatype = draw(maybe(st.sampled_from(V2_TYPES)))
    shape = draw(maybe(shapes))
    n = int(np.prod([d for d in shape if isinstance(d, int) and 0 <= d < 64] or [0])) if isinstance(shape, list) else 3
    element = st.floats(width=32) | st.integers(-2**40, 2**40) | st.booleans() | st.text(max_size=4)
    data = draw(maybe(st.lists(element, min_size=n, max_size=n) if n <= 64 else st.lists(element, max_size=8)))
    d = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    if draw(st.integers(0, 4)) == 0:
        d["parameters"] = draw(maybe(parameters()))
    for key in list(d):
        if draw(st.integers(0, 12)) == 0:
            del d[key]
    return d


@st.composite
def json_request(draw) -> dict:
    doc = {"inputs": draw(maybe(st.lists(json_input(), max_size=3)))}
    if draw(st.booleans()):
        doc["outputs"] = draw(maybe(st.lists(st.fixed_dictionaries(
            {"name": maybe(st.sampled_from(["OUTPUT0", "OUTPUT1", "sum", "OUT", "nope"]))},
            optional={"parameters": maybe(parameters())}), max_size=2)))
    if draw(st.booleans()):
        doc["parameters"] = draw(maybe(parameters()))
    if draw(st.integers(0, 5)) == 0:
        doc["id"] = draw(json_values(4))
    return doc


def deep(n: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * n + close * n).encode()


SPECIAL_BODIES = [
    deep(1000), deep(100_000), b'{"inputs": ' + deep(5000) + b"}",
    b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ' + deep(900) + b"}]}",
    b'{"inputs": [], "parameters": {"priority": 1e999}}', b'{"inputs": [], "parameters": {"timeout": -1}}',
    b'{"inputs": [], "parameters": {"priority": NaN}}', b'{"inputs": [], "outputs": [{"name": "OUTPUT0", "parameters": {"classification": "abc"}}]}',
    b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [0, 4611686018427387904, 4611686018427387904], "data": []}]}',
    b'{"inputs": [{"name": "IN", "datatype": "BYTES", "shape": [1, 1], "data": ["\\ud800"]}]}',
    b"\xff\xfe\x00", b"", b"null", b"[]", b'"x"', b"1e999",
]


@st.composite
def http_request(draw) -> tuple[str, bytes, dict]:
    """(path, body, headers) of a POST."""
    model = draw(st.sampled_from(MODELS + ["nope", LONG_NAME[:3000], "a/b", "%00"]))
    version = draw(st.sampled_from(["", "", "", "1", "7", "0", "-1", "x"]))
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    endpoint = draw(st.sampled_from(["/infer"] * 8 + ["", "/ready", "/config", "/stats"]))
    if endpoint != "/infer" or draw(st.integers(0, 15)) == 0:
        path = draw(st.sampled_from([path + endpoint, "/v2/logging", "/v2/repository/index",
                                     "/v2/repository/models/add_sub/load", "/v2/repository/models/nope/unload"]))
    else:
        path += endpoint
    kind = draw(st.integers(0, 9))
    headers: dict[str, str] = {}
    if kind == 0:
        body = draw(st.sampled_from(SPECIAL_BODIES))
    elif kind == 1:
        body = draw(st.binary(max_size=64))
    elif kind == 2:  # binary tensor data with a header length that may lie
        doc = json.dumps(draw(json_request()), allow_nan=True).encode()
        tail = draw(st.binary(max_size=128))
        headers["Inference-Header-Content-Length"] = str(draw(st.sampled_from([len(doc), len(doc) + 5, -1, 0])))
        body = doc + tail
    else:
        body = json.dumps(draw(json_request()), allow_nan=True).encode()
    enc = draw(st.sampled_from([None] * 6 + ["gzip", "deflate", "br", "gzip-broken", "bomb"]))
    if enc == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    elif enc == "deflate":
        body, headers["Content-Encoding"] = zlib.compress(body), "deflate"
    elif enc == "br":
        headers["Content-Encoding"] = "br"
    elif enc == "gzip-broken":
        body, headers["Content-Encoding"] = gzip.compress(body)[:-3] + b"xyz", "gzip"
    elif enc == "bomb":
        body, headers["Content-Encoding"] = BOMB, "gzip"
    return path, body, headers


#: 16 MiB + 1 of zeros, gzipped: 16 KB that inflate past the fuzzed servers' --max-body-bytes.
BOMB = gzip.compress(b"\0" * (16 * 1024 * 1024 + 1), compresslevel=9)
FUZZ_MAX_BODY = 8 * 1024 * 1024


# --------------------------------------------------------------------------- gRPC
@st.composite
def grpc_request(draw) -> tuple[str, bytes]:
    """(method, serialized request) for inference.GRPCInferenceService (or the health service)."""
    from tritonclient.grpc import service_pb2 as pb

    kind = draw(st.integers(0, 9))
    if kind == 0:
        method = draw(st.sampled_from(["ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics",
                                       "RepositoryIndex", "LogSettings", "ServerMetadata", "RepositoryModelLoad"]))
        return method, draw(st.binary(max_size=96))
    if kind == 1:
        method = draw(st.sampled_from(["ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics"]))
        req = getattr(pb, method + "Request")(name=draw(st.sampled_from(MODELS + ["nope", LONG_NAME])),
                                              version=draw(st.sampled_from(["", "1", "9", "x"])))
        return method, req.SerializeToString()
    req = pb.ModelInferRequest(model_name=draw(maybe(st.sampled_from(MODELS), st.sampled_from(["", "nope", LONG_NAME]))),
                               model_version=draw(st.sampled_from(["", "", "1", "3", "x"])),
                               id=draw(st.text(max_size=8)))
    raw = []
    for _ in range(draw(st.integers(0, 3))):
        t = req.inputs.add(name=draw(maybe(st.sampled_from(INPUT_NAMES), st.text(max_size=6))),
                           datatype=draw(maybe(st.sampled_from(V2_TYPES), st.text(max_size=6))))
        shape = draw(st.lists(st.integers(-3, 20) | st.sampled_from([2**31, 2**62, 2**63 - 1, -2**63]), max_size=4))
        t.shape.extend(shape)
        n = int(np.prod([d for d in shape if 0 <= d < 64] or [0]))
        size = draw(st.sampled_from([n * 4, n * 8, n, 0, 7]))
        if draw(st.booleans()):
            raw.append(draw(st.binary(min_size=min(size, 256), max_size=min(size, 256))))
        else:
            field = draw(st.sampled_from(["fp32_contents", "int_contents", "int64_contents", "bool_contents", "bytes_contents",
                                          "uint64_contents", "fp64_contents"]))
            values = {"fp32_contents": st.floats(width=32), "fp64_contents": st.floats(), "int_contents": st.integers(-2**31, 2**31 - 1),
                      "int64_contents": st.integers(-2**63, 2**63 - 1), "uint64_contents": st.integers(0, 2**64 - 1),
                      "bool_contents": st.booleans(), "bytes_contents": st.binary(max_size=5)}[field]
            getattr(t.contents, field).extend(draw(st.lists(values, max_size=min(n + 1, 40))))
        _grpc_params(draw, t.parameters)
    if raw and draw(st.integers(0, 3)):
        req.raw_input_contents.extend(raw)
    for _ in range(draw(st.integers(0, 2))):
        o = req.outputs.add(name=draw(st.sampled_from(["OUTPUT0", "sum", "OUT", "nope"])))
        _grpc_params(draw, o.parameters)
    _grpc_params(draw, req.parameters)
    data = req.SerializeToString()
    if kind == 2 and data:  # corrupt a valid message
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:draw(st.sampled_from([len(data), len(data) - 1]))]
    return "ModelInfer", data


def _grpc_params(draw, target) -> None:
    for _ in range(draw(st.integers(0, 2))):
        p = target[draw(st.sampled_from(PARAM_KEYS))]
        which = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param"]))
        value = {"bool_param": st.booleans(), "int64_param": st.integers(-2**63, 2**63 - 1), "string_param": st.text(max_size=6),
                 "double_param": st.floats(), "uint64_param": st.integers(0, 2**64 - 1)}[which]
        setattr(p, which, draw(value))


# --------------------------------------------------------------------------- good requests
def good_http(client) -> bool:
    """One right answer from each model over HTTP (tritonclient.http): True when all are right."""
    import tritonclient.http as th

    return _good(client, th)


def good_grpc(client) -> bool:
    import tritonclient.grpc as tg

    return _good(client, tg)


def _good(client, mod) -> bool:
    rng = np.random.default_rng()
    a, b = rng.random((2, 16), dtype=np.float32), rng.random((2, 16), dtype=np.float32)
    ins = [mod.InferInput("INPUT0", [2, 16], "FP32"), mod.InferInput("INPUT1", [2, 16], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    r = client.infer("add_sub", ins)
    ok = np.allclose(r.as_numpy("OUTPUT0"), a + b) and np.allclose(r.as_numpy("OUTPUT1"), a - b)
    ids, mask = rng.integers(0, 100, (1, 5)), rng.integers(0, 2, (1, 5))
    ins = [mod.InferInput("ids", [1, 5], "INT64"), mod.InferInput("mask", [1, 5], "INT64")]
    ins[0].set_data_from_numpy(ids)
    ins[1].set_data_from_numpy(mask)
    ok = ok and np.array_equal(client.infer("pair", ins).as_numpy("sum"), ids + mask)
    return bool(ok and client.is_server_live() and client.is_server_ready())
