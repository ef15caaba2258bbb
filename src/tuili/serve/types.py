"""Protocol-independent request/response types shared by the HTTP and gRPC adapters.

The adapters turn wire messages into these dataclasses; ``InferenceServer``
(core.py) only ever sees these. Tensor data is always a numpy array whose
shape equals ``shape``; BYTES tensors are object arrays of ``bytes``.
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


# --------------------------------------------------------------------------- datatypes
# V2 datatype name -> numpy dtype.  BYTES is an object array of bytes.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
try:  # bfloat16 is optional: ml_dtypes provides it
    import ml_dtypes

    V2_TO_NUMPY["BF16"] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    pass

NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}
NUMPY_TO_V2[np.dtype(np.str_)] = "BYTES"
NUMPY_TO_V2[np.dtype(np.bytes_)] = "BYTES"

# Model-config data types (model_config.proto DataType enum names) <-> V2 names.
CONFIG_TO_V2: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
V2_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TO_V2.items()}

# Element sizes in bytes for fixed-size V2 types (BYTES is variable).
V2_ITEMSIZE: dict[str, int] = {k: v.itemsize for k, v in V2_TO_NUMPY.items() if k != "BYTES"}


def v2_to_numpy(datatype: str) -> np.dtype:
    """numpy dtype for a V2 datatype name; InvalidInputError if unknown."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInputError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(sorted(V2_TO_NUMPY))}"
        ) from None


def numpy_to_v2(dtype) -> str:
    """V2 datatype name for a numpy dtype (str/bytes/object -> BYTES)."""
    dt = np.dtype(dtype)
    name = NUMPY_TO_V2.get(dt)
    if name is None:
        if dt.kind in ("U", "S", "O"):
            return "BYTES"
        raise InvalidInputError(f"numpy dtype {dt} has no V2 datatype")
    return name


def config_to_v2(config_type: str | int) -> str:
    """V2 name for a model-config data type (enum name 'TYPE_FP32' or its int value)."""
    if isinstance(config_type, int):
        config_type = _config_enum_name(config_type)
    try:
        return CONFIG_TO_V2[config_type]
    except KeyError:
        raise InvalidInputError(f"model config data type {config_type!r} has no V2 datatype") from None


def v2_to_config(datatype: str) -> str:
    """Model-config enum name ('TYPE_FP32') for a V2 datatype name."""
    try:
        return V2_TO_CONFIG[datatype]
    except KeyError:
        raise InvalidInputError(f"V2 datatype {datatype!r} has no model config data type") from None


def config_to_numpy(config_type: str | int) -> np.dtype:
    return v2_to_numpy(config_to_v2(config_type))


def numpy_to_config(dtype) -> str:
    return v2_to_config(numpy_to_v2(dtype))


# Triton's DataType enum numbering (model_config.proto).
_CONFIG_ENUM = [
    "TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
    "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64",
    "TYPE_STRING", "TYPE_BF16",
]


def _config_enum_name(value: int) -> str:
    if 0 <= value < len(_CONFIG_ENUM):
        return _CONFIG_ENUM[value]
    raise InvalidInputError(f"model config data type value {value} is out of range")


def config_enum_value(name: str) -> int:
    """Integer value of a model-config DataType enum name."""
    return _CONFIG_ENUM.index(name)


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


def element_count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
