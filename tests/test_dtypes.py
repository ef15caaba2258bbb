"""The one dtype table: every column agrees with the library that owns it; unknown types are named."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from tuili import dtypes
from tuili.dtypes import UnknownDTypeError


@pytest.mark.parametrize("row", dtypes.ALL, ids=lambda d: d.name)
def test_row_agrees_with_onnx_numpy_and_torch(row):
    assert onnx.TensorProto.DataType.Name(row.onnx).lower() == row.name
    if row.numpy is not None and row.name != "string":
        assert helper.tensor_dtype_to_np_dtype(row.onnx) == row.numpy
        assert dtypes.from_numpy(row.numpy) is row
    if row.torch is not None:
        t = row.to_torch()
        assert dtypes.from_torch(t) is row
        assert t.itemsize * 8 == row.bits or row.bits < 8
    if row.v2 is not None:
        assert dtypes.from_v2(row.v2) is row and dtypes.parse(row.v2) is row
    if row.config is not None:
        assert dtypes.from_config(row.config) is row
        assert dtypes.from_config(row.config_value) is row
    assert dtypes.from_onnx(row.onnx) is row and dtypes.from_name(row.ort_name) is row
    if row.numpy is not None and row.bits >= 8:
        assert row.numpy.itemsize * 8 == row.bits
    assert row.is_float == ("float" in row.name or row.name == "double")


def test_config_enum_matches_triton_numbering():
    from tuili.model_config.protos import model_config_pb2 as mc

    for row in dtypes.ALL:
        if row.config:
            assert mc.DataType.Value(row.config) == row.config_value


def test_strings_and_spellings():
    for s in (np.dtype(object), np.dtype("U3"), np.dtype("S2"), "BYTES", "TYPE_STRING", "tensor(string)"):
        assert dtypes.parse(s) is dtypes.STRING
    assert dtypes.parse("float32") is dtypes.FLOAT
    assert dtypes.parse(1) is dtypes.FLOAT
    assert dtypes.parse(torch.float32) is dtypes.FLOAT
    assert dtypes.parse("fp32") is dtypes.FLOAT


@pytest.mark.parametrize("call,value", [
    (dtypes.from_v2, "FP8"), (dtypes.from_onnx, 99), (dtypes.from_config, "TYPE_FP8"), (dtypes.from_config, 0),
    (dtypes.from_config, 15), (dtypes.from_numpy, np.dtype([("a", "i4")])), (dtypes.from_torch, torch.quint8),
    (dtypes.from_name, "tensor(float99)"), (dtypes.parse, "floaty"),
])
def test_unknown_type_is_named(call, value):
    with pytest.raises(UnknownDTypeError, match="unknown .*" + ("" if call is dtypes.from_numpy else "known:")):
        call(value)


def test_missing_column_is_named():
    c64 = dtypes.from_onnx(onnx.TensorProto.COMPLEX64)
    with pytest.raises(UnknownDTypeError, match="complex64.*V2"):
        c64.to_v2()
    with pytest.raises(UnknownDTypeError, match="model-config"):
        c64.to_config()
