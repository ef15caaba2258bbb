"""What `tuili perf` sends: a model's inputs, encoded once as the exact bytes of one request.

Encoding a tensor per request would make the load generator, not the server, the bottleneck (the
project's in-process Python benchmark reported 0.41-0.47 of the server's rate for that reason), so
every request of a run reuses the same pre-built body: HTTP with Triton's binary tensor extension,
gRPC as one serialized ``ModelInferRequest`` whose tensors travel in ``raw_input_contents``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from tuili import dtypes
from tuili.errors import InvalidInputError


@dataclass
class ModelInputs:
    """The model as the server describes it: name, version and, per input, (datatype, shape) where
    the shape includes the batch dimension when the model batches (``max_batch_size`` > 0)."""
    name: str
    version: str
    max_batch_size: int
    inputs: dict[str, tuple[str, list[int]]]
    outputs: list[str]

    @classmethod
    def from_server(cls, metadata: dict, config: dict, version: str = "") -> ModelInputs:
        inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]}
        return cls(metadata["name"], version, int(config.get("max_batch_size", 0)), inputs,
                   [t["name"] for t in metadata["outputs"]])


@dataclass
class Payload:
    """One request's tensors, and its encodings (filled in by ``encode_http`` / ``encode_grpc``)."""
    model: ModelInputs
    tensors: dict[str, np.ndarray]
    batch: int
    shm: dict = field(default_factory=dict)  # input/output name -> (region, byte size); set by perf.shm

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())


def resolve_shapes(model: ModelInputs, batch: int, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Concrete shape of every input: the batch dimension set to ``batch``, variable dims (-1) from
    ``shapes`` (``--shape name:d1,d2``, without the batch dimension)."""
    unknown = set(shapes) - set(model.inputs)
    if unknown:
        raise InvalidInputError(f"--shape names {sorted(unknown)}, which model {model.name!r} does not have; "
                                f"its inputs are {sorted(model.inputs)}")
    if batch < 1:
        raise InvalidInputError(f"batch size must be at least 1, got {batch}")
    if model.max_batch_size == 0 and batch != 1:
        raise InvalidInputError(f"model {model.name!r} does not batch (max_batch_size 0): use batch size 1")
    if model.max_batch_size and batch > model.max_batch_size:
        raise InvalidInputError(f"batch size {batch} exceeds model {model.name!r}'s max_batch_size {model.max_batch_size}")
    out = {}
    for name, (_, dims) in model.inputs.items():
        body = dims[1:] if model.max_batch_size else dims
        if name in shapes:
            given = shapes[name]
            if len(given) != len(body) or any(d != -1 and d != g for d, g in zip(body, given)):
                raise InvalidInputError(f"--shape {name}:{','.join(map(str, given))} does not fit the model's dims {body}")
            body = given
        if any(d < 0 for d in body):
            raise InvalidInputError(f"input {name!r} has variable dims {body}: give them with --shape {name}:"
                                    + ",".join("N" if d < 0 else str(d) for d in body))
        out[name] = ([batch] if model.max_batch_size else []) + list(body)
    return out


def make_tensors(model: ModelInputs, shapes: dict[str, list[int]], kind: str, seed: int = 0,
                 data: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Input tensors: ``random`` (uniform in [0, 1) for floats, 0..9 for integers, as perf_analyzer's
    defaults do not overflow small embeddings), ``zero``, or ``data`` (arrays from the user's .npz,
    one sample per input tiled to the batch)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (datatype, _) in model.inputs.items():
        dt = dtypes.from_v2(datatype)
        shape = shapes[name]
        if data is not None:
            if name not in data:
                raise InvalidInputError(f"--input-data has no array named {name!r}; it has {sorted(data)}")
            arr = np.asarray(data[name])
            sample = arr[0] if arr.ndim == len(shape) else arr
            if model.max_batch_size:
                sample = np.broadcast_to(sample, shape)
            out[name] = np.ascontiguousarray(sample, dtype=dt.to_numpy() if dt.v2 != "BYTES" else object).reshape(shape)
        elif dt.v2 == "BYTES":
            out[name] = np.full(shape, b"0" if kind == "zero" else b"tuili", dtype=object)
        elif dt.v2 == "BOOL":
            out[name] = np.zeros(shape, bool) if kind == "zero" else rng.random(shape) < 0.5
        elif kind == "zero":
            out[name] = np.zeros(shape, dt.to_numpy())
        elif dt.is_float:
            out[name] = rng.random(shape, dtype=np.float32).astype(dt.to_numpy())
        else:
            out[name] = rng.integers(0, 10, shape).astype(dt.to_numpy())
    return out


def _raw(a: np.ndarray) -> bytes:
    if a.dtype == object:  # BYTES: 4-byte little-endian length before each element
        return b"".join(len(b := (x if isinstance(x, bytes) else str(x).encode())).to_bytes(4, "little") + b
                        for x in a.reshape(-1))
    return np.ascontiguousarray(a).tobytes()


def encode_http(p: Payload, host: str, params: dict | None = None) -> bytes:
    """The whole HTTP/1.1 request (head and body) of one inference, binary tensor extension;
    ``params``: request parameters (e.g. sequence_id, sequence_start, sequence_end)."""
    inputs, blobs = [], []
    for name, a in p.tensors.items():
        entry = {"name": name, "shape": list(a.shape), "datatype": p.model.inputs[name][0]}
        if name in p.shm:
            region, size = p.shm[name]
            entry["parameters"] = {"shared_memory_region": region, "shared_memory_byte_size": size}
        else:
            raw = _raw(a)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        inputs.append(entry)
    outputs = []
    for name in p.model.outputs:
        if name in p.shm:
            region, size = p.shm[name]
            outputs.append({"name": name, "parameters": {"shared_memory_region": region, "shared_memory_byte_size": size}})
        else:
            outputs.append({"name": name, "parameters": {"binary_data": True}})
    doc = {"inputs": inputs, "outputs": outputs} | ({"parameters": params} if params else {})
    header = json.dumps(doc, separators=(",", ":")).encode()
    body = header + b"".join(blobs)
    path = f"/v2/models/{p.model.name}" + (f"/versions/{p.model.version}" if p.model.version else "") + "/infer"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def encode_grpc(p: Payload, params: dict | None = None) -> bytes:
    """One serialized ``inference.ModelInferRequest`` (``params`` as for ``encode_http``)."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=p.model.name, model_version=p.model.version)
    for key, value in (params or {}).items():
        if isinstance(value, bool):
            req.parameters[key].bool_param = value
        elif isinstance(value, int):
            req.parameters[key].uint64_param = value
        else:
            req.parameters[key].string_param = str(value)
    for name, a in p.tensors.items():
        t = req.inputs.add(name=name, datatype=p.model.inputs[name][0], shape=list(a.shape))
        if name in p.shm:
            region, size = p.shm[name]
            t.parameters["shared_memory_region"].string_param = region
            t.parameters["shared_memory_byte_size"].int64_param = size
        else:
            req.raw_input_contents.append(_raw(a))
    for name in p.model.outputs:
        o = req.outputs.add(name=name)
        if name in p.shm:
            region, size = p.shm[name]
            o.parameters["shared_memory_region"].string_param = region
            o.parameters["shared_memory_byte_size"].int64_param = size
    return req.SerializeToString()


def sequences(encode, first_id: int, stride: int, length: int):
    """Endless requests of sequences of ``length`` (START on the first, END on the last), ids
    ``first_id``, ``first_id + stride``, ...: three encodings per sequence, whatever its length."""
    def flags(seq_id: int, start: bool, end: bool) -> bytes:
        return encode({"sequence_id": seq_id, "sequence_start": start, "sequence_end": end})

    seq_id = first_id
    while True:
        if length == 1:
            yield flags(seq_id, True, True)
        else:
            yield flags(seq_id, True, False)
            middle = flags(seq_id, False, False) if length > 2 else b""
            for _ in range(length - 2):
                yield middle
            yield flags(seq_id, False, True)
        seq_id += stride
