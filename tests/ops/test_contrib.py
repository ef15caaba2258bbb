"""com.microsoft contrib kernels (tuili.ops.contrib) against onnxruntime on one-node models, and their
shape rules against the shapes onnxruntime produced."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from tuili.ir import from_model_proto, infer_shapes
from tuili.ops.registry import MS_DOMAIN

from ._ortref import _value_info, run_node

RNG = np.random.default_rng(0)


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def check(op, inputs, n_outputs=1, *, rtol=1e-5, atol=1e-5, **attrs):
    """Run the one-node com.microsoft model in onnxruntime and through tuili's kernel; compare every
    output, then check tuili's shape inference against the shapes onnxruntime produced (a dim that
    depends on a fed value may be inferred as unknown)."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, domain=MS_DOMAIN, **attrs)
    graph = helper.make_graph([node], "t", [_value_info(n, a) for n, a in zip(names, inputs) if a is not None],
                              [onnx.ValueInfoProto(name=o) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 8
    feeds = {n: a for n, a in zip(names, inputs) if a is not None}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    want = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = run_node(node, list(inputs), 1, MS_DOMAIN)
    for i, w in enumerate(want):
        assert got[i].dtype == w.dtype, f"{op} output {i}: {got[i].dtype} != {w.dtype}"
        assert got[i].shape == w.shape, f"{op} output {i}: {got[i].shape} != {w.shape}"
        np.testing.assert_allclose(got[i], w, rtol=rtol, atol=atol, err_msg=f"{op} output {i}")
    g = from_model_proto(model)
    infer_shapes(g)
    for v, w in zip(g.outputs, want):
        assert v.dtype == helper.np_dtype_to_tensor_dtype(w.dtype), f"{op} {v.name}: inferred dtype {v.dtype}"
        # a dim the rule cannot know (it depends on a fed value) is None
        assert v.shape is not None and len(v.shape) == w.ndim and all(
            d is None or d == e for d, e in zip(v.shape, w.shape)), f"{op} {v.name}: inferred {v.shape}, onnxruntime gave {w.shape}"
    return got


def test_gelu_family():
    x, b = f32(2, 3, 8, scale=3), f32(8)
    check("Gelu", [x])
    check("FastGelu", [x])
    check("FastGelu", [x, b])
    check("BiasGelu", [x, b])
    check("QuickGelu", [x])
    check("QuickGelu", [x], alpha=1.5)


@pytest.mark.parametrize("ta,tb,alpha", [(0, 0, 1.0), (1, 0, 0.5), (0, 1, 2.0), (1, 1, 0.125)])
def test_fused_matmul(ta, tb, alpha):
    a = f32(2, 5, 4) if ta else f32(2, 4, 5)
    b = f32(3, 5) if tb else f32(5, 3)
    check("FusedMatMul", [a, b], transA=ta, transB=tb, alpha=alpha)


def test_fused_gemm_and_conv():
    check("FusedGemm", [f32(4, 6), f32(5, 6), f32(5)], transB=1, activation="Relu")
    check("FusedGemm", [f32(4, 6), f32(6, 5), f32(5)], alpha=0.5, activation="LeakyRelu", activation_alpha=0.2)
    check("FusedConv", [f32(1, 3, 6, 6), f32(4, 3, 3, 3), f32(4)], activation="Relu", pads=[1, 1, 1, 1])
    check("FusedConv", [f32(1, 3, 6, 6), f32(4, 3, 3, 3), f32(4), f32(1, 4, 4, 4)], activation="Sigmoid")


def test_skip_layer_normalization():
    x, skip, gamma, beta, bias = f32(2, 3, 8), f32(2, 3, 8), f32(8), f32(8), f32(8)
    check("SkipLayerNormalization", [x, skip, gamma, beta, bias], epsilon=1e-5)
    got = check("SkipLayerNormalization", [x, skip, gamma, beta, bias], 4, epsilon=1e-5)
    np.testing.assert_allclose(got[3], x + skip + bias, rtol=1e-6)
    check("SkipLayerNormalization", [x, skip, gamma])
    check("SkipSimplifiedLayerNormalization", [x, skip, gamma, None])


def test_embed_layer_normalization():
    vocab, hidden, b, s = 20, 8, 2, 5
    ids = RNG.integers(0, vocab, (b, s)).astype(np.int32)
    seg = RNG.integers(0, 2, (b, s)).astype(np.int32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    inputs = [ids, seg, f32(vocab, hidden), f32(16, hidden), f32(2, hidden), f32(hidden), f32(hidden), mask]
    check("EmbedLayerNormalization", inputs, 3, epsilon=1e-5)
    check("EmbedLayerNormalization", inputs[:7], 2, epsilon=1e-5)


@pytest.mark.parametrize("mask_kind", ["none", "lengths", "raw2d", "raw3d"])
def test_attention(mask_kind):
    b, s, d, n = 2, 5, 16, 4
    mask = {"none": None, "lengths": np.array([3, 5], np.int32),
            "raw2d": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32),
            "raw3d": RNG.integers(0, 2, (b, s, s)).astype(np.int32)}[mask_kind]
    check("Attention", [f32(b, s, d), f32(d, 3 * d, scale=0.3), f32(3 * d), mask], num_heads=n, atol=1e-5)


def test_attention_unidirectional_past_and_bias():
    b, s, d, n, p = 2, 3, 16, 4, 2
    past = f32(2, b, n, p, d // n)
    check("Attention", [f32(b, s, d), f32(d, 3 * d, scale=0.3), f32(3 * d), None, past], 2, num_heads=n,
          unidirectional=1)
    check("Attention", [f32(b, s, d), f32(d, 3 * d, scale=0.3), f32(3 * d), None, None, f32(b, n, s, s)],
          num_heads=n, scale=0.3)


def test_multi_head_attention():
    b, s, l, d, n = 2, 3, 4, 16, 4
    check("MultiHeadAttention", [f32(b, s, d), f32(b, l, d), f32(b, l, d)], num_heads=n)
    check("MultiHeadAttention", [f32(b, s, d), f32(b, l, d), f32(b, l, d), f32(3 * d),
                                 np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32)], num_heads=n)
    past_k, past_v = f32(b, n, 2, d // n), f32(b, n, 2, d // n)
    check("MultiHeadAttention", [f32(b, s, d), f32(b, s, d), f32(b, s, d), None, None, None, past_k, past_v], 3,
          num_heads=n, unidirectional=1)
    check("MultiHeadAttention", [f32(b, s, d), f32(b, n, l, d // n), f32(b, n, l, d // n)], num_heads=n)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding(interleaved):
    b, s, n, h, max_s = 2, 4, 2, 8, 16
    cos, sin = np.cos(f32(max_s, h // 2)), np.sin(f32(max_s, h // 2))
    pos = RNG.integers(0, max_s, (b, s)).astype(np.int64)
    check("RotaryEmbedding", [f32(b, s, n * h), pos, cos, sin], interleaved=interleaved, num_heads=n)
    check("RotaryEmbedding", [f32(b, n, s, h), np.array([3], np.int64), cos, sin], interleaved=interleaved)


def test_group_query_attention_prompt_and_decode():
    b, s, n, kvn, h = 2, 4, 4, 2, 16  # onnxruntime rotates heads of a multiple of 16
    empty = np.zeros((b, kvn, 0, h), np.float32)
    prompt = [f32(b, s, n * h), f32(b, s, kvn * h), f32(b, s, kvn * h), empty, empty,
              np.full(b, s - 1, np.int32), np.array(s, np.int32)]
    _, pk, pv = check("GroupQueryAttention", prompt, 3, num_heads=n, kv_num_heads=kvn)
    decode = [f32(b, 1, n * h), f32(b, 1, kvn * h), f32(b, 1, kvn * h), pk, pv, np.full(b, s, np.int32),
              np.array(s + 1, np.int32)]
    check("GroupQueryAttention", decode, 3, num_heads=n, kv_num_heads=kvn)
    cos, sin = np.cos(f32(32, h // 2)), np.sin(f32(32, h // 2))
    check("GroupQueryAttention", decode + [cos, sin], 3, num_heads=n, kv_num_heads=kvn, do_rotary=1)
