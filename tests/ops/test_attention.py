"""Attention-family kernels against onnxruntime (Attention-23/24) and, where onnxruntime has
no kernel (RotaryEmbedding with 2-D caches, SwiGLU-28, LinearAttention-27), against
onnx.reference. Also the fully-masked-row rule and GQA equivalence with repeated K/V."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from tests.ops._ortref import make_model, run_ort, run_tuili
from tuili.errors import KernelError

SETTINGS = settings(max_examples=25, deadline=None)


def _ref(op, inputs, n_outputs=1, opset=23, domain="", **attrs):
    model, _ = make_model(op, inputs, n_outputs, opset, domain, **attrs)
    feeds = {f"in{i}": a for i, a in enumerate(inputs) if a is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(model).run(None, feeds)


def _attn(q, k, v, mask=None, past_k=None, past_v=None, n_out=1, opset=23, **attrs):
    inputs = [q, k, v, mask, past_k, past_v]
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs, n_out, opset, attrs


@st.composite
def attention_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    b = draw(st.integers(1, 2))
    hq, hkv = draw(st.sampled_from([(2, 2), (4, 2), (4, 1), (3, 3)]))
    sq = draw(st.integers(1, 5))
    skv = draw(st.integers(1, 6))
    dh = draw(st.sampled_from([4, 8]))
    dv = draw(st.sampled_from([dh, 6]))
    rank3 = draw(st.booleans())
    past = draw(st.integers(0, 3))
    if past and draw(st.booleans()):
        # With a cache the new K/V tokens are the query tokens. (When they differ, the spec's
        # causal offset is past_sequence_length while onnxruntime aligns to the total length.)
        skv = sq
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    is_causal = draw(st.booleans())
    softcap = draw(st.sampled_from([0.0, 0.0, 2.5]))
    scale = draw(st.sampled_from([None, 0.3]))
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    q, k, v = f(b, hq, sq, dh), f(b, hkv, skv, dh), f(b, hkv, skv, dv)
    attrs = {}
    if rank3:
        q = q.transpose(0, 2, 1, 3).reshape(b, sq, hq * dh)
        k = k.transpose(0, 2, 1, 3).reshape(b, skv, hkv * dh)
        v = v.transpose(0, 2, 1, 3).reshape(b, skv, hkv * dv)
        attrs.update(q_num_heads=hq, kv_num_heads=hkv)
    pk = pv = None
    if past:
        pk, pv = f(b, hkv, past, dh), f(b, hkv, past, dv)
    total = past + skv
    mask = None
    if mask_kind == "bool":
        mask = rng.random((sq, total)) < 0.8
        mask[:, 0] = True  # keep every row attendable for onnxruntime parity
    elif mask_kind == "float":
        mask = f(sq, total)
    if is_causal and (not past or skv == sq):
        attrs["is_causal"] = 1
    if softcap:
        attrs["softcap"] = softcap
    if scale is not None:
        attrs["scale"] = scale
    return [q, k, v, mask, pk, pv], (3 if past else 1), attrs


@SETTINGS
@given(attention_case())
def test_attention_matches_onnxruntime(case):
    inputs, n_out, attrs = case
    while inputs[-1] is None:
        inputs.pop()
    want = run_ort("Attention", inputs, n_out, 23, **attrs)
    before = [None if a is None else a.copy() for a in inputs]
    got = run_tuili("Attention", inputs, n_out, 23, **attrs)
    for a, b in zip(inputs, before):
        assert a is None or np.array_equal(a, b), "kernel mutated an input"
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape
        # onnxruntime zeroes nothing special here: every row keeps at least one key
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_qk_output_modes_match_onnxruntime(mode):
    # onnx.reference returns the softcapped scores for mode 0; the spec (and onnxruntime)
    # say mode 0 is the raw QK product, so onnxruntime is the reference here.
    rng = np.random.default_rng(mode)
    q = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    k = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    v = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    mask = rng.standard_normal((3, 5)).astype(np.float32)
    attrs = dict(qk_matmul_output_mode=mode, softcap=3.0)
    want = run_ort("Attention", [q, k, v, mask], 4, 24, **attrs)
    got = run_tuili("Attention", [q, k, v, mask], 4, 24, **attrs)
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert got[1] is k and got[2] is v  # no past: present is K/V itself


def test_attention_fully_masked_row_is_zero():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 2, 4)).astype(np.float32)
    k = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    v = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    mask = np.array([[False, False, False], [True, False, True]])
    y = run_tuili("Attention", [q, k, v, mask], 1, 23)[0]
    assert np.all(y[0, 0, 0] == 0) and np.all(np.isfinite(y))
    assert np.any(y[0, 0, 1] != 0)


def test_attention_gqa_equals_repeated_kv():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 6, 3, 8)).astype(np.float32)
    k = rng.standard_normal((2, 2, 4, 8)).astype(np.float32)
    v = rng.standard_normal((2, 2, 4, 8)).astype(np.float32)
    gqa = run_tuili("Attention", [q, k, v], 1, 23, is_causal=1)[0]
    mha = run_tuili("Attention", [q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1)], 1, 23, is_causal=1)[0]
    np.testing.assert_allclose(gqa, mha, rtol=1e-6, atol=1e-6)


def test_attention_float16_stays_float16_and_bad_heads_raise():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 4, 16)).astype(np.float16)
    y = run_tuili("Attention", [q, q, q], 1, 23, q_num_heads=4, kv_num_heads=4)[0]
    assert y.dtype == np.float16 and y.shape == (1, 4, 16)
    with pytest.raises(KernelError, match="num_heads"):
        run_tuili("Attention", [q, q, q], 1, 23, q_num_heads=3, kv_num_heads=3)


@SETTINGS
@given(
    st.integers(0, 2**31),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0, 4]),
    st.booleans(),
)
def test_rotary_embedding_matches_reference(seed, rank4, interleaved, rot_dim, with_pos):
    rng = np.random.default_rng(seed)
    b, s, h, d = 2, 3, 2, 8
    x = rng.standard_normal((b, h, s, d) if rank4 else (b, s, h * d)).astype(np.float32)
    half = (rot_dim or d) // 2
    attrs = {"interleaved": int(interleaved)}
    if rot_dim:
        attrs["rotary_embedding_dim"] = rot_dim
    if not rank4:
        attrs["num_heads"] = h
    if with_pos:
        cos = rng.standard_normal((10, half)).astype(np.float32)
        sin = rng.standard_normal((10, half)).astype(np.float32)
        pos = rng.integers(0, 10, (b, s)).astype(np.int64)
        inputs = [x, cos, sin, pos]
    else:
        cos = rng.standard_normal((b, s, half)).astype(np.float32)
        sin = rng.standard_normal((b, s, half)).astype(np.float32)
        inputs = [x, cos, sin]
    want = _ref("RotaryEmbedding", inputs, 1, 23, **attrs)[0]
    got = run_tuili("RotaryEmbedding", inputs, 1, 23, **attrs)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rotary_embedding_matches_onnxruntime_with_position_ids():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3, 8)).astype(np.float32)
    cos = rng.standard_normal((16, 4)).astype(np.float32)
    sin = rng.standard_normal((16, 4)).astype(np.float32)
    pos = rng.integers(0, 16, (2, 3)).astype(np.int64)
    want = run_ort("RotaryEmbedding", [x, cos, sin, pos], 1, 23)[0]
    got = run_tuili("RotaryEmbedding", [x, cos, sin, pos], 1, 23)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(st.integers(0, 2**31), st.floats(0.1, 3.0))
def test_swiglu_matches_reference(seed, alpha):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((3, 5)) * 4).astype(np.float32)
    b = rng.standard_normal((3, 5)).astype(np.float32)
    want = _ref("SwiGLU", [a, b], 1, 28, alpha=alpha)[0]
    got = run_tuili("SwiGLU", [a, b], 1, 28, alpha=alpha)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2)])
def test_linear_attention_matches_reference(rule, heads):
    rng = np.random.default_rng(4)
    hq, hkv = heads
    b, t, dk, dv = 2, 5, 4, 3
    q = rng.standard_normal((b, t, hq * dk)).astype(np.float32)
    k = (rng.standard_normal((b, t, hkv * dk)) * 0.5).astype(np.float32)
    v = rng.standard_normal((b, t, hkv * dv)).astype(np.float32)
    past = rng.standard_normal((b, hkv, dk, dv)).astype(np.float32)
    decay = -rng.random((b, t, hkv)).astype(np.float32) if rule.startswith("gated") else None
    beta = rng.random((b, t, hkv)).astype(np.float32) if "delta" in rule else None
    inputs = [q, k, v, past, decay, beta]
    while inputs[-1] is None:
        inputs.pop()
    attrs = dict(q_num_heads=hq, kv_num_heads=hkv, update_rule=rule)
    want = _ref("LinearAttention", inputs, 2, 27, **attrs)
    got = run_tuili("LinearAttention", inputs, 2, 27, **attrs)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
