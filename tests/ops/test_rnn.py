"""RNN / LSTM / GRU against onnxruntime: directions, sequence_lens, initial states,
peepholes, input_forget, linear_before_reset, clip, activations with alpha/beta; layout=1
(which onnxruntime's CPU kernels reject) is checked as the transpose of layout=0."""
from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tuili.ops.rnn as rnn_mod
from tests.ops._ortref import run_ort, run_tuili

SETTINGS = settings(max_examples=20, deadline=None)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
N_OUT = {"RNN": 2, "GRU": 2, "LSTM": 3}


@st.composite
def rnn_case(draw, op):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    t, b, i, h = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    f = lambda *s: (rng.standard_normal(s) * 0.7).astype(np.float32)  # noqa: E731
    x, w, r = f(t, b, i), f(nd, g * h, i), f(nd, g * h, h)
    bias = f(nd, 2 * g * h) if draw(st.booleans()) else None
    seq = rng.integers(1, t + 1, b).astype(np.int32) if draw(st.booleans()) else None
    init_h = f(nd, b, h) if draw(st.booleans()) else None
    inputs = [x, w, r, bias, seq, init_h]
    attrs = {"hidden_size": h, "direction": direction}
    if draw(st.booleans()):
        attrs["clip"] = 0.8
    if op == "LSTM":
        inputs.append(f(nd, b, h) if draw(st.booleans()) else None)
        inputs.append(f(nd, 3 * h) if draw(st.booleans()) else None)
        if draw(st.booleans()):
            attrs["input_forget"] = 1
    if op == "GRU" and draw(st.booleans()):
        attrs["linear_before_reset"] = 1
    while inputs[-1] is None:
        inputs.pop()
    return inputs, attrs


def _compare(op, inputs, attrs, opset=14):
    want = run_ort(op, inputs, N_OUT[op], opset, **attrs)
    before = [None if a is None else a.copy() for a in inputs]
    got = run_tuili(op, inputs, N_OUT[op], opset, **attrs)
    for a, b in zip(inputs, before):
        assert a is None or np.array_equal(a, b), "kernel mutated an input"
    if op != "RNN":  # the numpy loop (fallback when the numba recurrence is unavailable) agrees too
        with patch.object(rnn_mod, "_HAVE_NUMBA", False):
            slow = run_tuili(op, inputs, N_OUT[op], opset, **attrs)
        for w, g in zip(want, slow):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(rnn_case("RNN"))
def test_rnn_matches_onnxruntime(case):
    _compare("RNN", *case)


@SETTINGS
@given(rnn_case("LSTM"))
def test_lstm_matches_onnxruntime(case):
    _compare("LSTM", *case)


@SETTINGS
@given(rnn_case("GRU"))
def test_gru_matches_onnxruntime(case):
    _compare("GRU", *case)


@pytest.mark.parametrize(
    "op,acts,alpha,beta",
    [
        ("RNN", ["Relu"], None, None),
        ("RNN", ["LeakyRelu", "ScaledTanh"], [0.2, 0.9], [1.3]),
        ("GRU", ["HardSigmoid", "Softsign"], [0.3], [0.4]),
        ("LSTM", ["Sigmoid", "Tanh", "Affine"], [0.5], [0.1]),
        ("LSTM", ["HardSigmoid", "Elu", "ThresholdedRelu"], [0.25, 0.9, 0.1], [0.45]),
    ],
)
def test_activation_lists(op, acts, alpha, beta):
    rng = np.random.default_rng(0)
    nd = 2 if len(acts) in (2, 6) and op == "RNN" else 1
    direction = "bidirectional" if nd == 2 else "forward"
    g, h = GATES[op], 3
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    w = (rng.standard_normal((nd, g * h, 3)) * 0.5).astype(np.float32)
    r = (rng.standard_normal((nd, g * h, h)) * 0.5).astype(np.float32)
    attrs = {"hidden_size": h, "direction": direction, "activations": acts}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    _compare(op, [x, w, r], attrs)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_layout_1_is_transposed_layout_0(op):
    rng = np.random.default_rng(1)
    t, b, i, h, nd = 4, 3, 2, 3, 2
    g = GATES[op]
    x = rng.standard_normal((t, b, i)).astype(np.float32)
    w = rng.standard_normal((nd, g * h, i)).astype(np.float32)
    r = rng.standard_normal((nd, g * h, h)).astype(np.float32)
    bias = rng.standard_normal((nd, 2 * g * h)).astype(np.float32)
    seq = np.array([4, 2, 3], np.int32)
    h0 = rng.standard_normal((nd, b, h)).astype(np.float32)
    extra = [rng.standard_normal((nd, b, h)).astype(np.float32)] if op == "LSTM" else []
    attrs = {"hidden_size": h, "direction": "bidirectional"}
    ref = run_tuili(op, [x, w, r, bias, seq, h0, *extra], N_OUT[op], 14, **attrs)
    got = run_tuili(
        op,
        [x.transpose(1, 0, 2), w, r, bias, seq, h0.transpose(1, 0, 2), *[e.transpose(1, 0, 2) for e in extra]],
        N_OUT[op],
        14,
        layout=1,
        **attrs,
    )
    np.testing.assert_allclose(got[0], ref[0].transpose(2, 0, 1, 3), rtol=1e-6)
    for gs, rs in zip(got[1:], ref[1:]):
        np.testing.assert_allclose(gs, rs.transpose(1, 0, 2), rtol=1e-6)
    # and layout 0 itself agrees with onnxruntime
    _compare(op, [x, w, r, bias, seq, h0, *extra], attrs)
