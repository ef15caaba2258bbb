"""Cast / CastLike / BitCast against onnxruntime and against the ONNX spec tables
(float8 saturation, e8m0 rounding modes, 4- and 2-bit integer wrap-around)."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from tests.ops._ortref import run_model
from tuili.ops.registry import get_kernel

SETTINGS = settings(max_examples=30, deadline=None)


def _ort_cast(x, to, opset=21, **attrs):
    """Cast in onnxruntime. ORT's Python API cannot return bfloat16 / float8 arrays, so for those
    the model casts the result on to float32 and we compare the float32 values."""
    exotic = to in (TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ,
                    TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ)
    nodes = [helper.make_node("Cast", ["x"], ["y0" if exotic else "y"], to=to, **attrs)]
    if exotic:
        nodes.append(helper.make_node("Cast", ["y0"], ["y"], to=TensorProto.FLOAT))
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
        [onnx.ValueInfoProto(name="y")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    y = np.asarray(run_model(m, {"x": np.asarray(x)})[0])
    return y.astype(helper.tensor_dtype_to_np_dtype(to)) if exotic else y


def _cast(x, to, opset=21, **attrs):
    return get_kernel("Cast", "", opset).fn(x, to=to, **attrs)


def _same(got, ref):
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.astype(np.float64), ref.astype(np.float64))


finite = st.floats(-1e4, 1e4, width=32)
xs = hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), elements=finite)


@SETTINGS
@given(xs, st.sampled_from([TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT32, TensorProto.INT64,
                            TensorProto.BOOL, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8]))
def test_cast_from_float_vs_ort(x, to):
    if to in (TensorProto.INT8, TensorProto.UINT8):
        x = np.clip(x, 0, 100).astype(np.float32)  # out-of-range float -> int is undefined behaviour
    _same(_cast(x, to), _ort_cast(x, to))


@SETTINGS
@given(xs, st.sampled_from([TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
                            TensorProto.FLOAT8E5M2FNUZ]), st.booleans())
def test_cast_to_float8_vs_ort(x, to, saturate):
    _same(_cast(x, to, saturate=int(saturate)), _ort_cast(x, to, saturate=int(saturate)))


@SETTINGS
@given(hnp.arrays(np.int64, st.integers(1, 20), elements=st.integers(-(2**40), 2**40)),
       st.sampled_from([TensorProto.INT8, TensorProto.UINT16, TensorProto.INT32, TensorProto.FLOAT]))
def test_cast_int_wraps_like_ort(x, to):
    _same(_cast(x, to), _ort_cast(x, to))


def test_float8_saturation_table():
    x = np.array([np.inf, -np.inf, 1e6, -1e6, np.nan, 0.5], np.float32)
    y = _cast(x, TensorProto.FLOAT8E4M3FN).astype(np.float32)
    np.testing.assert_array_equal(y, [448, -448, 448, -448, np.nan, 0.5])
    y = _cast(x, TensorProto.FLOAT8E4M3FN, saturate=0).astype(np.float32)
    assert np.isnan(y[:5]).all() and y[5] == 0.5
    y = _cast(x, TensorProto.FLOAT8E5M2, saturate=0).astype(np.float32)
    np.testing.assert_array_equal(y, [np.inf, -np.inf, np.inf, -np.inf, np.nan, 0.5])


def test_e8m0_round_modes():
    x = np.array([1.0, 1.5, 1.1, 3.0, 0.124], np.float32)
    up = _cast(x, TensorProto.FLOAT8E8M0, opset=24, round_mode="up").astype(np.float32)
    down = _cast(x, TensorProto.FLOAT8E8M0, opset=24, round_mode="down").astype(np.float32)
    near = _cast(x, TensorProto.FLOAT8E8M0, opset=24, round_mode="nearest").astype(np.float32)
    np.testing.assert_array_equal(up, [1, 2, 2, 4, 0.125])
    np.testing.assert_array_equal(down, [1, 1, 1, 2, 0.0625])
    np.testing.assert_array_equal(near, [1, 2, 1, 4, 0.125])
    big = np.array([3e38, np.inf], np.float32)
    np.testing.assert_array_equal(_cast(big, TensorProto.FLOAT8E8M0, opset=24).astype(np.float32), [2.0**127] * 2)


@pytest.mark.parametrize(
    "to,expected",
    [
        (TensorProto.INT4, [7, -8, -1, 0, 7, -8]),
        (TensorProto.UINT4, [7, 8, 15, 0, 7, 8]),
        (TensorProto.INT2, [-1, 0, -1, 0, -1, 0]),
        (TensorProto.UINT2, [3, 0, 3, 0, 3, 0]),
    ],
)
def test_small_ints_wrap(to, expected):
    x = np.array([-9, -8, -1, 0, 7, 8], np.float32)
    y = _cast(x, to, opset=25)
    assert y.dtype == helper.tensor_dtype_to_np_dtype(to)
    np.testing.assert_array_equal(y.astype(np.int64), expected)


def test_float4_rounds_and_saturates():
    x = np.array([0.25, 0.75, 1e6, -np.inf, 2.5], np.float32)
    y = _cast(x, TensorProto.FLOAT4E2M1, opset=23).astype(np.float32)
    np.testing.assert_array_equal(y, [0, 1, 6, -6, 2])


def test_strings_both_ways():
    s = np.array(["1.5", "-INF", "+inf", "NaN", "1e3"], dtype=object)
    y = _cast(s, TensorProto.FLOAT)
    np.testing.assert_array_equal(y, np.array([1.5, -np.inf, np.inf, np.nan, 1000], np.float32))
    for x in (np.array([0.1, 1.0, 1e10, 1.2345678e-5, np.inf, -np.inf, np.nan], np.float32),
              np.array([0.1, 123456789.0, 1e20, np.pi, -0.0], np.float64), np.array([1.5, 0.3], np.float16), np.array([True, False]), np.array([-5, 7], np.int32)):
        back = _cast(x, TensorProto.STRING)
        assert back.dtype == object
        assert list(back) == list(_ort_cast(x, TensorProto.STRING)), x
    np.testing.assert_array_equal(_cast(np.array(["12", "-3"], dtype=object), TensorProto.INT64), [12, -3])


def test_castlike_and_bitcast():
    x = np.array([1.0, -2.5], np.float32)
    y = get_kernel("CastLike", "", 21).fn(x, np.zeros((0,), ml_dtypes.bfloat16))
    assert y.dtype == ml_dtypes.bfloat16
    b = get_kernel("BitCast", "", 26).fn(x, to=TensorProto.INT32)
    np.testing.assert_array_equal(b, x.view(np.int32))
    s = get_kernel("BitCast", "", 26).fn(np.array(1.0, np.float32), to=TensorProto.UINT32)
    assert s.shape == () and s == 0x3F800000
    from tuili.errors import KernelError

    with pytest.raises(KernelError, match="bit widths"):
        get_kernel("BitCast", "", 26).fn(x, to=TensorProto.INT64)


def test_cast_never_aliases_input():
    x = np.array([1.0, 2.0], np.float32)
    y = _cast(x, TensorProto.FLOAT)
    y[0] = 5
    assert x[0] == 1.0
