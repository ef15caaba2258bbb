"""Kernels of the com.microsoft contrib ops that onnxruntime's optimizers write into saved models
(its graph optimizer at ORT_ENABLE_EXTENDED and ``onnxruntime.transformers.optimizer``), so models
optimized by onnxruntime's tools load in tuili. Each follows onnxruntime's CPU kernel, checked
against it in tests/ops/test_contrib.py.

* activations: Gelu, FastGelu (tanh form, optional bias), BiasGelu, QuickGelu;
* matrix products: FusedMatMul (transA/transB/alpha), FusedGemm and FusedConv (with an activation);
* normalization: SkipLayerNormalization, SkipSimplifiedLayerNormalization, EmbedLayerNormalization;
* attention: Attention (packed QKV projection), MultiHeadAttention, GroupQueryAttention,
  RotaryEmbedding. The softmax core is the ONNX Attention kernel (tuili.ops.attention).

(MatMulNBits lives with the other matrix products in tuili.ops.matmul.)
"""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError, UnsupportedOpError
from tuili.ops.activation import gelu, on_torch
from tuili.ops.attention import attention as _onnx_attention
from tuili.ops.attention import rotary_embedding as _onnx_rotary
from tuili.ops.fused import apply_activation, fused_conv
from tuili.ops.matmul import gemm, matmul
from tuili.ops.registry import MS_DOMAIN, KernelContext, NodeInfo, prepares, register


def _ms(op: str):
    return register(op, domain=MS_DOMAIN, since=1)


# ----------------------------------------------------------------------------- activations
@_ms("Gelu")
def ms_gelu(x):
    return gelu(x)


@prepares(ms_gelu)
def prepare_ms_gelu(info: NodeInfo):
    return on_torch(ms_gelu) if info.float32_or_unknown(0) else None


@_ms("BiasGelu")
def bias_gelu(a, b):
    return gelu(a + b)


@_ms("FastGelu")
def fast_gelu(x, bias=None):
    return gelu(x if bias is None else x + bias, approximate="tanh")


@_ms("QuickGelu")
def quick_gelu(x, *, alpha=1.702):
    t = x * x.dtype.type(-alpha)
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += x.dtype.type(1)
    return x / t  # x * sigmoid(alpha * x)


# ----------------------------------------------------------------------------- matrix products
@_ms("FusedMatMul")
def ms_fused_matmul(a, b, *, alpha=1.0, transA=0, transB=0, transBatchA=0, transBatchB=0):  # noqa: N803
    """``alpha * op(A) @ op(B)``, op transposing the last two axes when asked."""
    if transBatchA or transBatchB:
        raise UnsupportedOpError("com.microsoft FusedMatMul: transBatchA/transBatchB are not supported by tuili; "
                                 "they appear only in training graphs")
    if transA and a.ndim >= 2:
        a = a.swapaxes(-1, -2)
    if transB and b.ndim >= 2:
        b = b.swapaxes(-1, -2)
    y = matmul(a, b)
    if alpha != 1.0:
        y = y * y.dtype.type(alpha)
    return y


def _activation(activation: str, alpha: float | None, beta: float | None, gamma: float | None):
    """FusedGemm's activation attributes as (name, params) for tuili.ops.fused.apply_activation."""
    params = {"LeakyRelu": [0.01 if alpha is None else alpha],
              "HardSigmoid": [0.2 if alpha is None else alpha, 0.5 if beta is None else beta],
              "Clip": [-np.inf if alpha is None else alpha, np.inf if beta is None else beta]}.get(activation, [])
    return activation, params


@_ms("FusedGemm")
def fused_gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation="",  # noqa: N803
               activation_alpha=None, activation_beta=None, activation_gamma=None):
    y = gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB)
    y = np.array(y, copy=True) if not y.flags.writeable or y.base is not None else y
    return apply_activation(y, *_activation(activation, activation_alpha, activation_beta, activation_gamma))


@_ms("FusedConv")
def ms_fused_conv(x, w, b=None, z=None, *, activation="", activation_params=None, auto_pad="NOTSET", dilations=None,
                  group=1, kernel_shape=None, pads=None, strides=None):
    return fused_conv(x, w, b, z, activation=activation, activation_params=activation_params, auto_pad=auto_pad,
                      dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)


# ----------------------------------------------------------------------------- normalization
def _layer_norm_last(s: np.ndarray, gamma, beta, epsilon: float, simplified: bool):
    """(y, mean, inv_std) of a layer norm over the last axis, statistics in float32 (as onnxruntime)."""
    sf = s.astype(np.float32, copy=False)
    if simplified:
        mean = None
        ms = np.mean(sf * sf, axis=-1, keepdims=True)
        inv = 1.0 / np.sqrt(ms + np.float32(epsilon))
        y = sf * inv
    else:
        mean = sf.mean(axis=-1, keepdims=True)
        d = sf - mean
        inv = 1.0 / np.sqrt(np.mean(d * d, axis=-1, keepdims=True) + np.float32(epsilon))
        y = d * inv
    y *= gamma
    if beta is not None:
        y += beta
    return y.astype(s.dtype, copy=False), mean, inv


def _skip_norm(ctx, x, skip, gamma, beta, bias, epsilon, simplified):
    if skip.shape != x.shape and np.broadcast_shapes(x.shape, skip.shape) != x.shape:
        raise KernelError(f"{ctx.op_type} node {ctx.node_name!r}: skip {skip.shape} does not broadcast to input "
                          f"{x.shape}")
    s = x + skip
    if bias is not None:
        s += bias
    y, mean, inv = _layer_norm_last(s, gamma, beta, epsilon, simplified)
    outs = [y, inv, s] if simplified else [y, mean, inv, s]  # the simplified form has no mean output
    return tuple(outs[: max(1, ctx.num_outputs)]) if ctx.num_outputs > 1 else y


@_ms("SkipLayerNormalization")
def skip_layer_normalization(ctx, x, skip, gamma, beta=None, bias=None, *, epsilon=1e-12):
    return _skip_norm(ctx, x, skip, gamma, beta, bias, epsilon, simplified=False)


@_ms("SkipSimplifiedLayerNormalization")
def skip_simplified_layer_normalization(ctx, x, skip, gamma, bias=None, *, epsilon=1e-12):
    return _skip_norm(ctx, x, skip, gamma, None, bias, epsilon, simplified=True)


@_ms("EmbedLayerNormalization")
def embed_layer_normalization(ctx, input_ids, segment_ids, word_embedding, position_embedding,
                              segment_embedding=None, gamma=None, beta=None, mask=None, position_ids=None, *,
                              epsilon=1e-12, mask_index_type=1):
    """BERT's embeddings: word + position (+ segment) embeddings, layer-normed; the mask's row sums as
    the 1D mask index Attention takes; the sum before normalization as a third output."""
    ids = input_ids.astype(np.int64, copy=False)
    b, s = ids.shape
    if ids.size and (ids.min() < 0 or ids.max() >= word_embedding.shape[0]):
        raise KernelError(f"EmbedLayerNormalization node {ctx.node_name!r}: input_ids outside [0, "
                          f"{word_embedding.shape[0]})")
    pos = np.arange(s) if position_ids is None else np.broadcast_to(position_ids.astype(np.int64), (b, s))
    emb = word_embedding[ids] + position_embedding[pos]
    if segment_embedding is not None and segment_ids is not None:
        emb = emb + segment_embedding[segment_ids.astype(np.int64, copy=False)]
    y, _, _ = _layer_norm_last(emb, gamma, beta, epsilon, simplified=False)
    if mask is None:
        mask_index = np.zeros(b, np.int32)
    else:
        mask_index = np.sum(mask != 0, axis=-1).astype(np.int32)
    outs = (y, mask_index, emb.astype(y.dtype, copy=False))
    return outs[: max(2, ctx.num_outputs)] if ctx.num_outputs > 1 else y


# ----------------------------------------------------------------------------- attention
def _sdpa(ctx, q, k, v, bias, scale: float, num_heads: int, kv_num_heads: int | None = None, softcap: float = 0.0):
    """Softmax attention of 4D (B, N, S, H) q and (B, kvN, T, H) k, v with an additive bias (broadcasting to
    (B, N, S, T)); returns (B, S, N*H)."""
    sub = KernelContext("Attention", 23, ctx.node_name, 1)
    y = _onnx_attention(sub, q, k, v, bias, scale=scale, softcap=softcap)
    b, n, s, h = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, s, n * h)


def _heads(x: np.ndarray, n: int, what: str, where: str) -> np.ndarray:
    """(B, S, N*H) -> (B, N, S, H)."""
    b, s, d = x.shape
    if n <= 0 or d % n:
        raise KernelError(f"{where}: {what} hidden size {d} is not divisible by num_heads={n}")
    return x.reshape(b, s, n, d // n).transpose(0, 2, 1, 3)


def _padding_bias(mask, b: int, s: int, t: int, filter_value: float, dtype, where: str) -> np.ndarray | None:
    """onnxruntime's mask_index / key_padding_mask forms as an additive (B, 1, S|1, T) bias:
    (B,) key lengths, (2B,) lengths then starts, (B, T) raw mask, (B, S, T) raw mask."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    j = np.arange(t)
    if mask.ndim == 1 and mask.shape[0] in (b, 2 * b):
        keep = j[None, :] < mask[:b, None]
        if mask.shape[0] == 2 * b:
            keep &= j[None, :] >= mask[b:, None]
        keep = keep[:, None, None, :]
    elif mask.ndim == 2 and mask.shape == (b, t):
        keep = (mask != 0)[:, None, None, :]
    elif mask.ndim == 3 and mask.shape == (b, s, t):
        keep = (mask != 0)[:, None, :, :]
    else:
        raise KernelError(f"{where}: mask of shape {mask.shape} is not one of (B,), (2B,), (B, T) or (B, S, T) "
                          f"for B={b}, S={s}, T={t}")
    return np.where(keep, dtype.type(0), dtype.type(filter_value))


def _causal_bias(s: int, t: int, dtype, filter_value: float) -> np.ndarray:
    past = t - s
    allowed = np.arange(t)[None, :] <= np.arange(s)[:, None] + past
    return np.where(allowed, dtype.type(0), dtype.type(filter_value))


def _add(bias, extra):
    if extra is None:
        return bias
    return extra if bias is None else bias + extra


@_ms("Attention")
def ms_attention(ctx, x, weights, bias=None, mask_index=None, past=None, attention_bias=None,
                 past_sequence_length=None, *, num_heads, qkv_hidden_sizes=None, unidirectional=0,
                 mask_filter_value=-10000.0, scale=0.0, do_rotary=0, past_present_share_buffer=0,
                 rotary_embedding_dim=0):
    """BERT-style self-attention with the Q, K, V projections packed in one weight (D, Dq + Dk + Dv)."""
    where = f"com.microsoft Attention node {ctx.node_name!r}"
    if do_rotary or past_present_share_buffer:
        raise UnsupportedOpError(f"{where}: do_rotary / past_present_share_buffer are not supported by tuili")
    if x.ndim != 3:
        raise KernelError(f"{where}: input must be (batch, sequence, hidden), got {x.shape}")
    sizes = list(qkv_hidden_sizes) if qkv_hidden_sizes else [weights.shape[1] // 3] * 3
    if sum(sizes) != weights.shape[1] or sizes[0] != sizes[1]:
        raise KernelError(f"{where}: qkv_hidden_sizes {sizes} do not fit weights {weights.shape}")
    qkv = matmul(x, weights)
    if bias is not None:
        qkv = qkv + bias
    q, k, v = np.split(qkv, [sizes[0], sizes[0] + sizes[1]], axis=-1)
    q, k, v = (_heads(a, num_heads, w, where) for a, w in ((q, "Q"), (k, "K"), (v, "V")))
    if past is not None:
        k = np.concatenate((past[0], k), axis=2)
        v = np.concatenate((past[1], v), axis=2)
    b, _, s, h = q.shape
    t = k.shape[2]
    dt = q.dtype
    mask = _padding_bias(mask_index, b, s, t, mask_filter_value, dt, where)
    if unidirectional:
        mask = _add(mask, _causal_bias(s, t, dt, mask_filter_value))
    mask = _add(mask, None if attention_bias is None else attention_bias.astype(dt, copy=False))
    y = _sdpa(ctx, q, k, v, mask, scale or 1.0 / math.sqrt(h), num_heads)
    if ctx.num_outputs > 1:
        return y, np.stack((k, v))
    return y


@_ms("MultiHeadAttention")
def multi_head_attention(ctx, query, key=None, value=None, bias=None, key_padding_mask=None, attention_bias=None,
                         past_key=None, past_value=None, past_sequence_length=None, cache_indirection=None, *,
                         num_heads, mask_filter_value=-10000.0, scale=0.0, unidirectional=0):
    """Attention of a projected 3D query (B, S, D) and 3D (B, L, D) key/value, or 4D (B, N, L, H) key/value
    (a cross-attention cache, used as is)."""
    where = f"com.microsoft MultiHeadAttention node {ctx.node_name!r}"
    if cache_indirection is not None or past_sequence_length is not None:
        raise UnsupportedOpError(f"{where}: cache_indirection / past_sequence_length (beam search) are not supported")
    n = num_heads
    if query.ndim != 3 or key is None or value is None:
        raise UnsupportedOpError(f"{where}: packed QKV (a 5D query without key and value) is not supported (nor "
                                 "by onnxruntime on the CPU); give 3D query, key and value")
    dq = query.shape[-1]
    q = _heads(query if bias is None else query + bias[:dq], n, "query", where)
    if key.ndim == 5:  # packed KV (B, L, N, 2, H)
        k, v = (key[:, :, :, i].transpose(0, 2, 1, 3) for i in range(2))
    elif key.ndim == 4:
        k, v = key, value
    else:
        dk = key.shape[-1]
        k = key if bias is None else key + bias[dq:dq + dk]
        v = value if bias is None else value + bias[dq + dk:]
        k, v = _heads(k, n, "key", where), _heads(v, n, "value", where)
    if past_key is not None and past_value is not None:
        k = np.concatenate((past_key, k), axis=2)
        v = np.concatenate((past_value, v), axis=2)
    b, _, s, h = q.shape
    t = k.shape[2]
    dt = q.dtype
    mask = _padding_bias(key_padding_mask, b, s, t, mask_filter_value, dt, where)
    if unidirectional:
        mask = _add(mask, _causal_bias(s, t, dt, mask_filter_value))
    mask = _add(mask, None if attention_bias is None else attention_bias.astype(dt, copy=False))
    y = _sdpa(ctx, q, k, v, mask, scale or 1.0 / math.sqrt(h), n)
    outs = (y, k, v)
    return outs[: ctx.num_outputs] if ctx.num_outputs > 1 else y


def _rotate(ctx, x4, cos_cache, sin_cache, positions, interleaved):
    """Rotary embedding of (B, N, S, H) ``x4`` at ``positions`` (B, S)."""
    sub = KernelContext("RotaryEmbedding", 23, ctx.node_name, 1)
    return _onnx_rotary(sub, x4, cos_cache, sin_cache, positions, interleaved=interleaved,
                        rotary_embedding_dim=2 * cos_cache.shape[-1])


@_ms("RotaryEmbedding")
def ms_rotary_embedding(ctx, x, position_ids, cos_cache, sin_cache, *, interleaved=0, num_heads=0,
                        rotary_embedding_dim=0, scale=1.0, is_packed_batching=0):
    """Rotary position embedding of (B, S, N*H) or (B, N, S, H) input; ``position_ids`` (B, S), or one
    number: the first position (positions offset, offset + 1, ...)."""
    where = f"com.microsoft RotaryEmbedding node {ctx.node_name!r}"
    if is_packed_batching or scale != 1.0:
        raise UnsupportedOpError(f"{where}: is_packed_batching / scale != 1 are not supported by tuili")
    b = x.shape[0]
    s = x.shape[1] if x.ndim == 3 else x.shape[2]
    pos = np.asarray(position_ids).astype(np.int64)
    if pos.size == 1:
        pos = np.broadcast_to(pos.reshape(1, 1) + np.arange(s), (b, s))
    sub = KernelContext("RotaryEmbedding", 23, ctx.node_name, 1)
    return _onnx_rotary(sub, x, cos_cache, sin_cache, pos, interleaved=interleaved, num_heads=num_heads,
                        rotary_embedding_dim=rotary_embedding_dim)


@_ms("GroupQueryAttention")
def group_query_attention(ctx, query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
                          cos_cache=None, sin_cache=None, position_ids=None, attention_bias=None, head_sink=None, *,
                          num_heads, kv_num_heads, scale=0.0, softcap=0.0, do_rotary=0, rotary_interleaved=0,
                          local_window_size=-1, smooth_softmax=0, qk_output=0):
    """Grouped-query attention with a KV cache (B, kvN, P, H): the new keys go after each row's past
    (``seqlens_k[b] + 1`` is row b's total length), causal within the row, padding after it ignored."""
    where = f"com.microsoft GroupQueryAttention node {ctx.node_name!r}"
    if smooth_softmax or head_sink is not None or qk_output or position_ids is not None:
        raise UnsupportedOpError(f"{where}: smooth_softmax / head_sink / qk_output / position_ids are not supported "
                                 "by tuili")
    n, kvn = num_heads, kv_num_heads
    if key is None:  # packed (B, S, (N + 2 kvN) * H)
        hs = query.shape[-1] // (n + 2 * kvn)
        query, key, value = np.split(query, [n * hs, (n + kvn) * hs], axis=-1)
    q, k, v = _heads(query, n, "query", where), _heads(key, kvn, "key", where), _heads(value, kvn, "value", where)
    b, _, s, h = q.shape
    total = np.asarray(seqlens_k).reshape(-1).astype(np.int64) + 1  # per row
    t_all = int(np.asarray(total_sequence_length).reshape(-1)[0])
    past_len = total - s  # per row: where this run's keys start
    first_prompt = past_key is None or past_key.shape[2] == 0 or (s > 1 and s == t_all)
    if first_prompt:
        past_len = np.zeros(b, np.int64)
    if do_rotary:
        if cos_cache is None or sin_cache is None:
            raise KernelError(f"{where}: do_rotary needs cos_cache and sin_cache")
        pos = past_len[:, None] + np.arange(s)[None, :]
        q = _rotate(ctx, q, cos_cache, sin_cache, pos, rotary_interleaved)
        k = _rotate(ctx, k, cos_cache, sin_cache, pos, rotary_interleaved)
    p_buf = 0 if past_key is None else past_key.shape[2]
    present_len = max(t_all, p_buf)
    dt = q.dtype
    present_k = np.zeros((b, kvn, present_len, h), dt)
    present_v = np.zeros((b, kvn, present_len, h), dt)
    for i in range(b):
        p = int(past_len[i])
        if p:
            present_k[i, :, :p] = past_key[i, :, :p]
            present_v[i, :, :p] = past_value[i, :, :p]
        present_k[i, :, p:p + s] = k[i]
        present_v[i, :, p:p + s] = v[i]
    j = np.arange(present_len)[None, None, :]
    qpos = past_len[:, None, None] + np.arange(s)[None, :, None]  # (B, S, 1)
    allowed = (j <= qpos) & (j < total[:, None, None])
    if local_window_size >= 0:
        allowed &= j > qpos - local_window_size
    mask = np.where(allowed, dt.type(0), dt.type(-np.inf))[:, None]  # (B, 1, S, T)
    if attention_bias is not None:
        mask = mask + attention_bias.astype(dt, copy=False)
    y = _sdpa(ctx, q, present_k, present_v, mask, scale or 1.0 / math.sqrt(h), n, kvn, softcap)
    outs = (y, present_k, present_v)
    return outs[: ctx.num_outputs] if ctx.num_outputs > 1 else y
