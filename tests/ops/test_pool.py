"""Pooling kernels against onnxruntime."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.ops import _ortref
from tests.ops._ortref import run_tuili

# float outputs of these kernels are checked at this tolerance unless a test says otherwise
assert_same = partial(_ortref.assert_same, rtol=1e-4, atol=1e-5)

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def pool_case(draw, with_dilation=True):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    s = [draw(st.integers(1, 3)) for _ in range(nd)]
    d = [draw(st.integers(1, 2)) if with_dilation else 1 for _ in range(nd)]
    p = [draw(st.integers(0, k[i] - 1)) for i in range(nd)] + [draw(st.integers(0, k[i] - 1)) for i in range(nd)]
    sp = [draw(st.integers((k[i] - 1) * d[i] + 1, 8)) for i in range(nd)]
    ceil = draw(st.integers(0, 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = rng.standard_normal((draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sp)).astype(np.float32)
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs = dict(kernel_shape=k, strides=s)
    if auto_pad == "NOTSET":
        attrs.update(pads=p, ceil_mode=ceil)
        if with_dilation:
            attrs["dilations"] = d
    else:
        attrs["auto_pad"] = auto_pad
        # SAME with stride > kernel needs negative pads, which onnxruntime rejects or crops inconsistently
        assume(auto_pad == "VALID" or all(s[i] <= k[i] for i in range(nd)))
    return x, attrs


@SETTINGS
@given(pool_case(), st.integers(0, 1))
def test_maxpool_matches_ort(case, storage_order):
    x, attrs = case
    if x.ndim == 4:
        assert_same("MaxPool", [x], n_outputs=2, opset=12, storage_order=storage_order, **attrs)
    else:
        assert_same("MaxPool", [x], opset=12, **attrs)


@SETTINGS
@given(pool_case(with_dilation=False), st.integers(0, 1))
def test_averagepool_matches_ort(case, count_include_pad):
    x, attrs = case
    assert_same("AveragePool", [x], opset=11, count_include_pad=count_include_pad, **attrs)


@SETTINGS
@given(pool_case(with_dilation=False), st.sampled_from([1, 2, 3]))
def test_lppool_matches_ort(case, p):
    x, attrs = case
    attrs.pop("ceil_mode", None)
    assert_same("LpPool", [x], opset=11, p=p, rtol=1e-4, atol=1e-4, **attrs)


def test_maxpool_uint8_and_int8():
    rng = np.random.default_rng(0)
    for dt in (np.uint8, np.int8):
        x = rng.integers(-100 if dt == np.int8 else 0, 100, (1, 2, 7, 7)).astype(dt)
        assert_same("MaxPool", [x], opset=12, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 4, 6, 7), (1, 2, 3, 4, 5)])
def test_global_pools(op, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert_same(op, [x], opset=2 if op == "GlobalLpPool" else 1)


def test_maxunpool_inverts_maxpool_indices():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    y, idx = run_tuili("MaxPool", [x], n_outputs=2, opset=12, kernel_shape=[2, 2], strides=[2, 2])
    assert_same("MaxUnpool", [y, idx], opset=11, kernel_shape=[2, 2], strides=[2, 2])
    (u,) = run_tuili("MaxUnpool", [y, idx], opset=11, kernel_shape=[2, 2], strides=[2, 2])
    # every pooled max lands back at its position; everything else is zero
    assert np.count_nonzero(u) == y.size
    np.testing.assert_array_equal(u.reshape(-1)[idx.reshape(-1)], y.reshape(-1))
