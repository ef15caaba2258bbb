"""Attention family: Attention (opset 23+), LinearAttention, FlexAttention (preview),
RotaryEmbedding, SwiGLU.

Everything stays in the input dtype (float32 in float32) except where the op asks
for another precision (``softmax_precision``). Grouped-query attention never copies
K/V: query heads are viewed as ``(kv_heads, group)`` and broadcast against K/V.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.errors import KernelError, UnsupportedOpError
from tuili.ops._torch import attention_on_torch, torch_or_none
from tuili.ops.registry import register

log = logging.getLogger(__name__)

_NP_OF_ONNX = {1: np.float32, 10: np.float16, 11: np.float64}


def _np_dtype(onnx_type: int):
    if onnx_type in _NP_OF_ONNX:
        return np.dtype(_NP_OF_ONNX[onnx_type])
    if onnx_type == 16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    raise KernelError(f"unsupported softmax_precision {onnx_type}: use 1 (float), 10 (float16), 11 (double) or 16 (bfloat16)")


def _split_heads(x: np.ndarray, num_heads: int, what: str) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D) as a view."""
    b, s, hd = x.shape
    if num_heads <= 0 or hd % num_heads:
        raise KernelError(f"Attention: {what} hidden size {hd} (shape {x.shape}) is not divisible by num_heads={num_heads}")
    return x.reshape(b, s, num_heads, hd // num_heads).transpose(0, 2, 1, 3)


def _softmax_lastaxis(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Softmax over the last axis, in x's dtype; all -inf rows give zeros (not NaN).

    With ``inplace`` the caller hands over ``x`` (a temporary it owns) to save allocations.
    """
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), np.zeros((), x.dtype), m)
    e = np.subtract(x, m, out=x if inplace else None)
    np.exp(e, out=e)
    s = np.sum(e, axis=-1, keepdims=True)
    s = np.where(s == 0, np.ones((), s.dtype), s)
    e /= s
    return e


def _mask_positions(sq: int, skv: int, offset, is_causal: bool, left: int, right: int):
    """Boolean 'allowed' array (q, kv) or (B, 1, q, kv) for causal/sliding-window masking."""
    i = np.arange(sq).reshape(sq, 1)
    j = np.arange(skv).reshape(1, skv)
    if np.ndim(offset) > 0:
        pos = i + np.asarray(offset).reshape(-1, 1, 1, 1)  # (B,1,q,1)
    else:
        pos = i + int(offset)
    allowed = np.ones(np.broadcast_shapes(np.shape(pos), j.shape), dtype=bool)
    if is_causal:
        allowed &= j <= pos
    if left >= 0:
        allowed &= (pos - j) <= left
    if right >= 0:
        allowed &= (j - pos) <= right
    return allowed


@register("Attention", since=23)
def attention(
    ctx,
    q,
    k,
    v,
    attn_mask=None,
    past_key=None,
    past_value=None,
    nonpad_kv_seqlen=None,
    *,
    is_causal=0,
    kv_num_heads=None,
    q_num_heads=None,
    qk_matmul_output_mode=0,
    scale=None,
    softcap=0.0,
    softmax_precision=None,
    left_window_size=-1,
    right_window_size=-1,
):
    where = f"Attention node {ctx.node_name!r}"
    if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
        raise KernelError(f"{where}: Q, K, V must all be 3D or all 4D, got {q.shape}, {k.shape}, {v.shape}")
    if (past_key is None) != (past_value is None):
        raise KernelError(f"{where}: past_key and past_value must be given together")
    dtype = q.dtype
    rank3 = q.ndim == 3
    if rank3:
        if q_num_heads is None or kv_num_heads is None:
            raise KernelError(f"{where}: 3D Q/K/V need the q_num_heads and kv_num_heads attributes")
        q = _split_heads(q, q_num_heads, "Q")
        k = _split_heads(k, kv_num_heads, "K")
        v = _split_heads(v, kv_num_heads, "V")
    b, hq, sq, dh = q.shape
    hkv = k.shape[1]
    if hq % hkv or v.shape[1] != hkv:
        raise KernelError(f"{where}: q heads {hq} must be a multiple of kv heads {hkv} (K {k.shape}, V {v.shape})")

    if scale is None:
        scale = 1.0 / np.sqrt(dh)
    s = dtype.type(np.sqrt(scale))

    if past_key is not None:
        k = np.concatenate((past_key, k), axis=2)
        v = np.concatenate((past_value, v), axis=2)
    present_key, present_value = k, v
    skv = k.shape[2]

    # ---- additive bias (None when nothing masks) ----
    bias = None
    if attn_mask is not None:
        m = attn_mask
        pad = skv - m.shape[-1]
        if m.dtype == np.bool_:
            m = np.where(m, dtype.type(0), dtype.type(-np.inf))
        else:
            m = m.astype(dtype, copy=False)
        if pad > 0:
            m = np.concatenate([m, np.full(m.shape[:-1] + (pad,), -np.inf, dtype=dtype)], axis=-1)
        bias = m
    windowed = left_window_size >= 0 or right_window_size >= 0
    if is_causal or windowed:
        if past_key is not None:
            offset = past_key.shape[2]
        elif nonpad_kv_seqlen is not None:
            offset = np.asarray(nonpad_kv_seqlen).reshape(-1).astype(np.int64) - sq
        else:
            offset = 0
        allowed = _mask_positions(sq, skv, offset, bool(is_causal), left_window_size, right_window_size)
        pos_bias = np.where(allowed, dtype.type(0), dtype.type(-np.inf))
        bias = pos_bias if bias is None else bias + pos_bias
    if nonpad_kv_seqlen is not None:
        lens = np.asarray(nonpad_kv_seqlen).reshape(-1)
        keep = np.arange(skv)[None, :] < lens[:, None]
        pad_bias = np.where(keep, dtype.type(0), dtype.type(-np.inf)).reshape(b, 1, 1, skv)
        bias = pad_bias if bias is None else bias + pad_bias

    # ---- scores: (B, Hkv, G, Sq, Skv) viewed as (B, Hq, Sq, Skv) ----
    g = hq // hkv
    if dtype in (np.float32, np.float64):
        # one scaling pass over Q only (K may be a long cache); rounding differs by ~1 ulp
        qs = (q * dtype.type(scale)).reshape(b, hkv, g, sq, dh)
        ks = k[:, :, None]
    else:
        # low precision: scale both sides by sqrt(scale) as the spec's graph does
        qs = (q * s).reshape(b, hkv, g, sq, dh)
        ks = (k * s)[:, :, None]
    scores = np.matmul(qs, ks.swapaxes(-1, -2)).reshape(b, hq, sq, skv).astype(dtype, copy=False)
    want_qk = ctx.num_outputs >= 4
    qk_out = scores.copy() if want_qk and qk_matmul_output_mode == 0 else None
    if softcap and softcap > 0:
        c = dtype.type(softcap)
        scores = np.tanh(scores / c) * c
    if want_qk and qk_matmul_output_mode == 1:
        qk_out = scores.copy()
    if bias is not None:
        if np.broadcast_shapes(scores.shape, bias.shape) == scores.shape:
            scores += bias  # scores is a temporary this kernel owns
        else:
            scores = scores + bias
    if want_qk and qk_matmul_output_mode == 2:
        qk_out = scores.copy()
    if softmax_precision is not None:
        scores = scores.astype(_np_dtype(softmax_precision), copy=False)
    probs = _softmax_lastaxis(scores, inplace=True)
    if bias is not None:
        dead = np.isneginf(np.max(bias, axis=-1, keepdims=True))
        if dead.any():
            probs = np.where(dead, np.zeros((), probs.dtype), probs)
    probs = probs.astype(dtype, copy=False)
    if want_qk and qk_matmul_output_mode == 3:
        qk_out = probs
    dv = v.shape[-1]
    y = np.matmul(probs.reshape(b, hkv, g, sq, skv), v[:, :, None]).reshape(b, hq, sq, dv)
    if rank3:
        y = y.transpose(0, 2, 1, 3).reshape(b, sq, hq * dv)
    outs = [y.astype(dtype, copy=False)]
    if ctx.num_outputs >= 2:
        outs += [present_key, present_value]
    if want_qk:
        outs.append(qk_out.astype(dtype, copy=False))
    outs = outs[: max(1, ctx.num_outputs)]
    return tuple(outs) if len(outs) > 1 else outs[0]


@register("LinearAttention", since=27)
def linear_attention(
    ctx,
    query,
    key,
    value,
    past_state=None,
    decay=None,
    beta=None,
    *,
    chunk_size=64,
    kv_num_heads=None,
    q_num_heads=None,
    scale=0.0,
    update_rule="gated_delta",
):
    where = f"LinearAttention node {ctx.node_name!r}"
    if update_rule not in ("linear", "gated", "delta", "gated_delta"):
        raise KernelError(f"{where}: unknown update_rule {update_rule!r}; use linear, gated, delta or gated_delta")
    if q_num_heads is None or kv_num_heads is None or q_num_heads % kv_num_heads:
        raise KernelError(f"{where}: q_num_heads ({q_num_heads}) must be a positive multiple of kv_num_heads ({kv_num_heads})")
    gating = update_rule in ("gated", "gated_delta")
    delta = update_rule in ("delta", "gated_delta")
    if gating and decay is None:
        raise KernelError(f"{where}: update_rule {update_rule!r} needs the decay input")
    if delta and beta is None:
        raise KernelError(f"{where}: update_rule {update_rule!r} needs the beta input")
    out_dtype = query.dtype
    b, t, _ = query.shape
    dk = query.shape[-1] // q_num_heads
    dv = value.shape[-1] // kv_num_heads
    grp = q_num_heads // kv_num_heads
    f32 = np.float32
    q4 = _split_heads(query, q_num_heads, "query").astype(f32)
    k4 = _split_heads(key, kv_num_heads, "key").astype(f32)
    v4 = _split_heads(value, kv_num_heads, "value").astype(f32)
    if gating:
        if decay.shape[-1] == kv_num_heads:
            g4 = decay.reshape(b, t, kv_num_heads, 1).transpose(0, 2, 1, 3)
        else:
            g4 = _split_heads(decay, kv_num_heads, "decay")
        eg = np.exp(g4.astype(f32))  # (B, Hkv, T, 1 or dk)
    if delta:
        bl = beta.shape[-1]
        b4 = beta.reshape(b, t, bl, 1).transpose(0, 2, 1, 3).astype(f32)
    if past_state is not None:
        state_dtype = past_state.dtype
        state = past_state.astype(f32)  # copy
    else:
        state_dtype = out_dtype
        state = np.zeros((b, kv_num_heads, dk, dv), dtype=f32)
    sc = float(scale) if scale else 1.0 / np.sqrt(dk)
    qg = q4.reshape(b, kv_num_heads, grp, t, dk)
    out = np.empty((b, kv_num_heads, grp, t, dv), dtype=f32)
    for i in range(t):
        kt = k4[:, :, i, :]
        vt = v4[:, :, i, :]
        if gating:
            state = state * eg[:, :, i, :, None]
        if delta:
            retrieved = np.matmul(kt[:, :, None, :], state)[:, :, 0, :]
            vt = b4[:, :, i, :] * (vt - retrieved)
        state = state + kt[..., :, None] * vt[..., None, :]
        out[:, :, :, i, :] = np.matmul(qg[:, :, :, i, :], state) * f32(sc)
    y = out.reshape(b, q_num_heads, t, dv).transpose(0, 2, 1, 3).reshape(b, t, q_num_heads * dv)
    return y.astype(out_dtype), state.astype(state_dtype)


@register("FlexAttention", domain="ai.onnx.preview", since=1)
def flex_attention(ctx, q, k, v, *, prob_mod=None, score_mod=None, scale=None, softmax_precision=None):
    where = f"FlexAttention node {ctx.node_name!r}"
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise KernelError(f"{where}: Q, K, V must be rank 4, got {q.shape}, {k.shape}, {v.shape}")
    dtype = q.dtype
    if softmax_precision is not None:
        sp = _np_dtype(softmax_precision)
    else:
        sp = np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
    b, hq, sq, dh = q.shape
    hkv = k.shape[1]
    if hq % hkv:
        raise KernelError(f"{where}: q heads {hq} must be a multiple of kv heads {hkv}")
    g = hq // hkv
    if scale is None:
        scale = 1.0 / np.sqrt(dh)
    qc, kc, vc = q.astype(sp, copy=False), k.astype(sp, copy=False), v.astype(sp, copy=False)
    scores = np.matmul(qc.reshape(b, hkv, g, sq, dh), kc[:, :, None].swapaxes(-1, -2)).reshape(b, hq, sq, -1)
    scores = scores * sp.type(scale)

    def _apply(graph, x, name):
        if ctx.run_subgraph is None:
            raise UnsupportedOpError(f"{where}: {name} subgraph needs the runtime (no subgraph runner available)")
        return np.asarray(ctx.run_subgraph(graph, [x])[0])

    if score_mod is not None:
        scores = _apply(score_mod, scores, "score_mod")
    probs = _softmax_lastaxis(scores)
    if prob_mod is not None:
        probs = _apply(prob_mod, probs, "prob_mod")
    y = np.matmul(probs.reshape(b, hkv, g, sq, -1), vc[:, :, None]).reshape(b, hq, sq, v.shape[-1])
    return y.astype(dtype, copy=False)


@register("RotaryEmbedding", since=23)
def rotary_embedding(ctx, x, cos_cache, sin_cache, position_ids=None, *, interleaved=0, num_heads=0, rotary_embedding_dim=0):
    where = f"RotaryEmbedding node {ctx.node_name!r}"
    orig_shape = x.shape
    if x.ndim == 4:
        xb = x.transpose(0, 2, 1, 3)  # (B, S, H, D)
    elif x.ndim == 3:
        if not num_heads:
            raise KernelError(f"{where}: 3D input {x.shape} needs the num_heads attribute")
        bsz, sl, hid = x.shape
        xb = x.reshape(bsz, sl, num_heads, hid // num_heads)
    else:
        raise KernelError(f"{where}: input must be 3D or 4D, got {x.shape}")
    d = xb.shape[3]
    rd = rotary_embedding_dim or d
    half = rd // 2
    if position_ids is not None:
        cos = cos_cache[position_ids]
        sin = sin_cache[position_ids]
    else:
        cos, sin = cos_cache, sin_cache
    if cos.shape[-1] != half or sin.shape[-1] != half:
        raise KernelError(f"{where}: cos/sin cache last dim {cos.shape[-1]} must be rotary_embedding_dim/2 = {half}")
    if cos.ndim == 2:  # (S, half) without position ids
        cos, sin = cos[None], sin[None]
    cos = cos[:, :, None, :].astype(x.dtype, copy=False)
    sin = sin[:, :, None, :].astype(x.dtype, copy=False)
    xr = xb[..., :rd]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    out = np.empty(xb.shape, dtype=x.dtype)
    if interleaved:
        out[..., 0:rd:2] = real
        out[..., 1:rd:2] = imag
    else:
        out[..., :half] = real
        out[..., half:rd] = imag
    out[..., rd:] = xb[..., rd:]
    if x.ndim == 3:
        return out.reshape(orig_shape)
    return out.transpose(0, 2, 1, 3)


@register("SwiGLU", since=28)
def swiglu(a, b, *, alpha=1.0):
    if a.shape != b.shape:
        raise KernelError(f"SwiGLU: A {a.shape} and B {b.shape} must have the same shape (no broadcasting)")
    al = a.dtype.type(alpha)
    sig = np.ones((), a.dtype) / (np.ones((), a.dtype) + np.exp(-(al * a)))
    return (a * sig * b).astype(a.dtype, copy=False)


@register("Attention", domain="tuili", since=1)
def fused_attention(q, k_t, v, bias=None, *, scale=1.0):
    """``tuili::Attention(Q, Kᵀ, V, bias?)``: ``Softmax(scale * Q @ Kᵀ + bias) @ V`` over the last axis,
    the MatMul/Softmax pattern tuili's optimizer fuses (passes/attention_fusion.py). The scores are
    one temporary, scaled, biased and normalized in place (a fully masked row is NaN, as Softmax gives)."""
    if (q.dtype == np.float32 and k_t.dtype == np.float32 and v.dtype == np.float32
            and (bias is None or bias.dtype == np.float32) and torch_or_none() is not None):
        return attention_on_torch(q, k_t, v, bias, scale)
    scores = np.matmul(q, k_t)
    if scores is q or scores is k_t:  # never for matmul, but keep the inputs untouched
        scores = scores.copy()
    dt = scores.dtype.type
    if scale != 1.0:
        scores *= dt(scale)
    if bias is not None:
        if np.broadcast_shapes(scores.shape, bias.shape) == scores.shape:
            scores += bias.astype(scores.dtype, copy=False)
        else:
            scores = scores + bias
    scores -= np.max(scores, axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= np.sum(scores, axis=-1, keepdims=True)
    return np.matmul(scores, v)
