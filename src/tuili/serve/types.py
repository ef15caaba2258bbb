"""Protocol-independent request/response types shared by the HTTP and gRPC adapters.

The adapters turn wire messages into these dataclasses; ``InferenceServer``
(core.py) only ever sees these. Tensor data is always a numpy array whose
shape equals ``shape``; BYTES tensors are object arrays of ``bytes``. Datatype
names map to numpy through tuili.dtypes (``dtypes.from_v2("FP32").numpy``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuili.errors import InvalidInputError


@dataclass(slots=True)
class InferInput:
    name: str
    datatype: str  # V2 name: "FP32", "INT64", "BYTES", "BOOL", ...
    shape: list[int]
    data: np.ndarray
    parameters: dict = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict = field(default_factory=dict)  # "binary_data": bool, "classification"/"class_count": int


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None
    parameters: dict = field(default_factory=dict)


@dataclass(slots=True)
class InferOutput:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]
    parameters: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- BYTES (de)serialization
def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """V2 binary form of a BYTES tensor: each element as 4-byte little-endian length + bytes, row-major."""
    parts = []
    for item in arr.ravel(order="C"):
        if isinstance(item, str):
            b = item.encode("utf-8")
        elif isinstance(item, (bytes, bytearray, memoryview)):
            b = bytes(item)
        else:
            b = str(item).encode("utf-8")
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes_tensor(buf, count: int | None = None) -> np.ndarray:
    """Inverse of serialize_bytes_tensor; returns a 1-D object array of bytes.

    If ``count`` is given, exactly that many elements must be present."""
    mv = memoryview(buf)
    out = []
    pos, n = 0, len(mv)
    while pos < n:
        if pos + 4 > n:
            raise InvalidInputError(f"BYTES tensor data is truncated: 4-byte length prefix at offset {pos} runs past {n} bytes")
        ln = int.from_bytes(mv[pos:pos + 4], "little")
        pos += 4
        if pos + ln > n:
            raise InvalidInputError(f"BYTES tensor element {len(out)} declares {ln} bytes but only {n - pos} remain")
        out.append(bytes(mv[pos:pos + ln]))
        pos += ln
    if count is not None and len(out) != count:
        raise InvalidInputError(f"BYTES tensor holds {len(out)} elements but its shape needs {count}")
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr

