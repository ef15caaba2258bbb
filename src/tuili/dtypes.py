"""One table of element types: ONNX <-> numpy/ml_dtypes <-> KServe V2 <-> Triton TYPE_* <-> torch.

Every part of tuili that names an element type looks it up here (by ONNX enum, numpy dtype, V2
name, model-config name or value, onnxruntime's ``tensor(float)`` string, or torch dtype) and gets
one :class:`DType` row. An unknown type raises :class:`UnknownDTypeError` naming it and the known
ones; there is no silent fallback. Columns a type does not have (no V2 name for complex64, no
numpy dtype before ml_dtypes knows it) are ``None``; asking for them raises the same error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from tuili.errors import InvalidInputError


class UnknownDTypeError(InvalidInputError):
    """An element type that the table does not know, or a column a known type does not have."""


@dataclass(frozen=True, slots=True)
class DType:
    """One element type. ``bits`` is the storage width of one element (0 for variable-size strings)."""

    onnx: int  # onnx.TensorProto.DataType value
    name: str  # ONNX name in lower case, as onnxruntime prints it: "float", "int8", "bfloat16"
    numpy: np.dtype | None
    v2: str | None  # KServe V2 / Triton protocol name: "FP32", "BYTES"
    config: str | None  # Triton model_config.proto DataType name: "TYPE_FP32"
    torch: str | None  # attribute of the torch module: "float32"
    bits: int
    is_float: bool
    is_signed: bool

    @property
    def is_integer(self) -> bool:
        return not self.is_float and self.name not in ("bool", "string") and not self.name.startswith("complex")

    @property
    def ort_name(self) -> str:
        """onnxruntime's NodeArg type string: ``tensor(float)``."""
        return f"tensor({self.name})"

    @property
    def config_value(self) -> int:
        """The TYPE_* enum value of Triton's model_config.proto."""
        return _CONFIG_ENUM.index(self._need("config", self.config))

    def to_numpy(self) -> np.dtype:
        return self._need("numpy", self.numpy)

    def to_v2(self) -> str:
        return self._need("KServe V2 datatype", self.v2)

    def to_config(self) -> str:
        return self._need("model-config data type", self.config)

    def to_torch(self) -> Any:
        import torch

        return getattr(torch, self._need("torch dtype", self.torch))

    def _need(self, column: str, value):
        if value is None:
            raise UnknownDTypeError(f"element type {self.name!r} has no {column}")
        return value

    def __str__(self) -> str:
        return self.name


def _row(onnx: int, name: str, numpy, v2, config, torch, bits, is_float, is_signed) -> DType:
    return DType(onnx, name, None if numpy is None else np.dtype(numpy), v2, config, torch, bits, is_float, is_signed)


# onnx.TensorProto.DataType values (stable: part of the ONNX standard)
ALL: tuple[DType, ...] = (
    _row(1, "float", np.float32, "FP32", "TYPE_FP32", "float32", 32, True, True),
    _row(2, "uint8", np.uint8, "UINT8", "TYPE_UINT8", "uint8", 8, False, False),
    _row(3, "int8", np.int8, "INT8", "TYPE_INT8", "int8", 8, False, True),
    _row(4, "uint16", np.uint16, "UINT16", "TYPE_UINT16", "uint16", 16, False, False),
    _row(5, "int16", np.int16, "INT16", "TYPE_INT16", "int16", 16, False, True),
    _row(6, "int32", np.int32, "INT32", "TYPE_INT32", "int32", 32, False, True),
    _row(7, "int64", np.int64, "INT64", "TYPE_INT64", "int64", 64, False, True),
    _row(8, "string", object, "BYTES", "TYPE_STRING", None, 0, False, False),
    _row(9, "bool", np.bool_, "BOOL", "TYPE_BOOL", "bool", 8, False, False),
    _row(10, "float16", np.float16, "FP16", "TYPE_FP16", "float16", 16, True, True),
    _row(11, "double", np.float64, "FP64", "TYPE_FP64", "float64", 64, True, True),
    _row(12, "uint32", np.uint32, "UINT32", "TYPE_UINT32", "uint32", 32, False, False),
    _row(13, "uint64", np.uint64, "UINT64", "TYPE_UINT64", "uint64", 64, False, False),
    _row(14, "complex64", np.complex64, None, None, "complex64", 64, False, True),
    _row(15, "complex128", np.complex128, None, None, "complex128", 128, False, True),
    _row(16, "bfloat16", ml_dtypes.bfloat16, "BF16", "TYPE_BF16", "bfloat16", 16, True, True),
    _row(17, "float8e4m3fn", ml_dtypes.float8_e4m3fn, None, None, "float8_e4m3fn", 8, True, True),
    _row(18, "float8e4m3fnuz", ml_dtypes.float8_e4m3fnuz, None, None, "float8_e4m3fnuz", 8, True, True),
    _row(19, "float8e5m2", ml_dtypes.float8_e5m2, None, None, "float8_e5m2", 8, True, True),
    _row(20, "float8e5m2fnuz", ml_dtypes.float8_e5m2fnuz, None, None, "float8_e5m2fnuz", 8, True, True),
    _row(21, "uint4", ml_dtypes.uint4, None, None, "uint4", 4, False, False),
    _row(22, "int4", ml_dtypes.int4, None, None, "int4", 4, False, True),
    _row(23, "float4e2m1", ml_dtypes.float4_e2m1fn, None, None, None, 4, True, True),
    _row(24, "float8e8m0", ml_dtypes.float8_e8m0fnu, None, None, "float8_e8m0fnu", 8, True, False),
    _row(25, "uint2", getattr(ml_dtypes, "uint2", None), None, None, None, 2, False, False),
    _row(26, "int2", getattr(ml_dtypes, "int2", None), None, None, None, 2, False, True),
)

# Triton's DataType enum, in model_config.proto's numbering
_CONFIG_ENUM = ("TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
                "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64",
                "TYPE_STRING", "TYPE_BF16")

_BY_ONNX = {d.onnx: d for d in ALL}
_BY_NAME = {d.name: d for d in ALL}
_BY_V2 = {d.v2: d for d in ALL if d.v2}
_BY_CONFIG = {d.config: d for d in ALL if d.config}
_BY_TORCH = {d.torch: d for d in ALL if d.torch}
_BY_NUMPY = {d.numpy: d for d in ALL if d.numpy is not None}

FLOAT = _BY_ONNX[1]
STRING = _BY_ONNX[8]
#: the float types of the fp32 engine's fused kernels (float, float16, double)
IEEE_FLOATS = frozenset((1, 10, 11))
#: V2 names in the order a user reads them in an error message
V2_NAMES = tuple(d.v2 for d in ALL if d.v2)


def _unknown(kind: str, value, known) -> UnknownDTypeError:
    return UnknownDTypeError(f"unknown {kind} {value!r}; known: {', '.join(str(k) for k in known)}")


def from_onnx(elem_type: int) -> DType:
    """Row of an onnx.TensorProto.DataType value."""
    try:
        return _BY_ONNX[int(elem_type)]
    except (KeyError, TypeError, ValueError):
        raise _unknown("ONNX element type", elem_type, sorted(_BY_ONNX)) from None


def from_name(name: str) -> DType:
    """Row of an ONNX type name (``float``, ``int8``) or onnxruntime's ``tensor(float)``."""
    s = name[7:-1] if isinstance(name, str) and name.startswith("tensor(") and name.endswith(")") else name
    try:
        return _BY_NAME[s]
    except (KeyError, TypeError):
        raise _unknown("ONNX type name", name, _BY_NAME) from None


def from_v2(datatype: str) -> DType:
    """Row of a KServe V2 datatype name (``FP32``, ``BYTES``)."""
    try:
        return _BY_V2[datatype]
    except (KeyError, TypeError):
        raise _unknown("V2 datatype", datatype, V2_NAMES) from None


def from_config(data_type: str | int) -> DType:
    """Row of a Triton model-config data type, by name (``TYPE_FP32``) or enum value."""
    if isinstance(data_type, int) and not isinstance(data_type, bool):
        if not 0 < data_type < len(_CONFIG_ENUM):
            raise _unknown("model-config data type value", data_type, range(1, len(_CONFIG_ENUM)))
        data_type = _CONFIG_ENUM[data_type]
    if isinstance(data_type, str) and data_type in _BY_CONFIG:
        return _BY_CONFIG[data_type]
    raise _unknown("model-config data type", data_type, _BY_CONFIG)


def from_numpy(dtype: Any) -> DType:
    """Row of a numpy (or ml_dtypes) dtype; str, bytes and object arrays are ONNX strings."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise _unknown("numpy dtype", dtype, _BY_NUMPY) from None
    if dt.kind in "OSU":
        return STRING
    try:
        return _BY_NUMPY[dt]
    except KeyError:
        raise _unknown("numpy dtype", dt, _BY_NUMPY) from None


def from_torch(dtype: Any) -> DType:
    """Row of a torch dtype (``torch.float32``)."""
    name = str(dtype).removeprefix("torch.")
    try:
        return _BY_TORCH[name]
    except KeyError:
        raise _unknown("torch dtype", dtype, _BY_TORCH) from None


def parse(value: Any) -> DType:
    """Row of any spelling a user may write: a DType, an ONNX enum value, a V2 name, a TYPE_* name,
    an ONNX or onnxruntime type name, a numpy dtype or a torch dtype."""
    if isinstance(value, DType):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return from_onnx(value)
    if isinstance(value, str):
        for table in (_BY_V2, _BY_CONFIG, _BY_NAME):
            if value in table:
                return table[value]
        if value.startswith("tensor("):
            return from_name(value)
        if value.upper() in _BY_V2:
            return _BY_V2[value.upper()]
    if type(value).__module__.startswith("torch"):
        return from_torch(value)
    try:
        return from_numpy(value)
    except UnknownDTypeError:
        raise _unknown("element type", value, V2_NAMES) from None
