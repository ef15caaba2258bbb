"""tuili::BinaryConv: bit-exact against the float form Conv(Sign(X), Wb) * alpha + B (onnxruntime and numpy)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import tuili
from tuili.errors import KernelError
from tuili.ops import binary
from tuili.ops.conv import conv


def _case(rng, n, c, h, w, cout, k, zeros=0.0):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[rng.random(x.shape) < zeros] = 0.0  # Sign(0) = 0: must contribute nothing
    wb = np.where(rng.random((cout, c, k, k)) < 0.5, -1.0, 1.0).astype(np.float32)
    alpha = (rng.random(cout) + 0.1).astype(np.float32)
    alpha[::3] *= -1  # folded BatchNorm scales may be negative
    bias = rng.standard_normal(cout).astype(np.float32)
    return x, wb, alpha, bias


def _float_form(x, wb, alpha, bias, **attrs):
    dots = conv(np.sign(x), wb, **attrs)  # +-1 products of integers: exact in float32
    return dots * alpha[:, None, None] + bias[:, None, None]


@given(c=st.sampled_from([1, 3, 63, 64, 65, 130]), k=st.sampled_from([1, 2, 3]), s=st.sampled_from([1, 2]),
       p=st.sampled_from([0, 1, 2]), d=st.sampled_from([1, 2]), zeros=st.sampled_from([0.0, 0.2]),
       seed=st.integers(0, 1000))
def test_equals_sign_conv_exactly(c, k, s, p, d, zeros, seed):
    rng = np.random.default_rng(seed)
    x, wb, alpha, bias = _case(rng, 2, c, 9, 8, 5, k, zeros)
    attrs = dict(pads=[p, p + (seed % 2), p, p], strides=[s, s], dilations=[d, d])  # asymmetric pads too
    want = _float_form(x, wb, alpha, bias, **attrs)
    got = binary.binary_conv(x, binary.pack_weights(wb), alpha, bias, channels=c, **attrs)
    assert got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("c", [5, 64, 70])
def test_numpy_path_matches(c):
    rng = np.random.default_rng(c)
    x, wb, alpha, bias = _case(rng, 1, c, 7, 6, 4, 3, zeros=0.1)
    neg, nz = binary.pack_signs(x, (1, 1, 1, 1))
    dots = binary._binary_conv_np(neg, nz, binary.pack_weights(wb), (4, 3), (2, 2), (1, 1))
    assert np.array_equal(dots.astype(np.float32), conv(np.sign(x), wb, pads=[1] * 4, strides=[2, 2]))


def test_pack_roundtrip_and_layout():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 70, 2, 2)).astype(np.float32)
    packed = binary.pack_weights(w)
    assert packed.shape == (3, 2, 2, 2) and packed.dtype == np.uint64
    assert np.array_equal(binary.unpack_weights(packed, 70), np.where(w < 0, -1, 1))
    one = np.ones((1, 70, 1, 1), np.float32)
    one[0, 65] = -1.0  # channel 65: word 1, bit 1
    assert binary.pack_weights(one)[0, 0, 0].tolist() == [0, 2]


def test_bad_inputs_are_clear_errors():
    rng = np.random.default_rng(0)
    x, wb, alpha, _ = _case(rng, 1, 8, 5, 5, 2, 3)
    packed = binary.pack_weights(wb)
    with pytest.raises(KernelError, match="channels"):
        binary.binary_conv(x, packed, alpha, channels=9)
    with pytest.raises(KernelError, match="group"):
        binary.binary_conv(x, packed, alpha, channels=8, group=2)
    with pytest.raises(KernelError, match="one value per output channel"):
        binary.binary_conv(x, packed, alpha[:1], channels=8)
    with pytest.raises(KernelError, match="4-D"):
        binary.binary_conv(x[0], packed, alpha, channels=8)


def test_session_runs_the_op_like_onnxruntime_runs_sign_conv():
    rng = np.random.default_rng(1)
    x, wb, alpha, bias = _case(rng, 2, 70, 10, 10, 6, 3)
    w = wb * alpha[:, None, None, None]
    attrs = dict(pads=[1, 1, 1, 1], strides=[2, 2])

    def model(nodes, inits, domain=None):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 70, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
        ops = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        return helper.make_model(g, opset_imports=ops).SerializeToString()

    std = model([helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Conv", ["s", "w", "b"], ["y"], **attrs)],
                {"w": w, "b": bias})
    bop = model([helper.make_node("BinaryConv", ["x", "wp", "a", "b"], ["y"], domain="tuili", channels=70, **attrs)],
                {"wp": binary.pack_weights(wb), "a": alpha, "b": bias}, "tuili")
    want = ort.InferenceSession(std, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = tuili.InferenceSession(bop).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
