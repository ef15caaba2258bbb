"""Neural-network ops: conv, pools, normalizations, matmul/gemm, recurrent nets, attention, losses."""
from __future__ import annotations

from onnx import TensorProto

from tuili.errors import ShapeInferenceError

from .registry import (
    INT64,
    InferContext,
    TensorType,
    broadcast_shapes,
    dim_add,
    dim_div,
    dim_mul,
    dim_sub,
    merge_dim,
    merge_shape,
    normalize_axis,
    same,
    shape_rule,
    value_to_dim,
)


def _window_out(d, k, s, dil, pb, pe, auto_pad, ceil_mode=False, pool=False):
    """Output length of a conv/pool window over a spatial dim of length d."""
    if not isinstance(d, int):
        if k == 1 and s == 1 and pb == 0 and pe == 0 and isinstance(d, str):
            return d
        if auto_pad in ("SAME_UPPER", "SAME_LOWER") and s == 1:
            return d
        if s == 1 and not pool and d is not None:  # a valid conv needs d + pads >= window
            pads = 0 if auto_pad == "VALID" else pb + pe
            return dim_add(d, pads - dil * (k - 1))
        return None
    ek = dil * (k - 1) + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-d // s)
    if auto_pad == "VALID":  # no padding; ceil_mode still applies (as onnx and onnxruntime do)
        pb = pe = 0
    num = d + pb + pe - ek
    if ceil_mode:
        out = -(-num // s) + 1
        if pool and (out - 1) * s >= d + pb:
            out -= 1
        return out
    if num < 0:
        if pool:  # a window larger than the input: onnx and onnxruntime truncate toward zero
            return max(int(num / s) + 1, 0)
        raise ShapeInferenceError(f"window {ek} larger than padded input {d + pb + pe}")
    return num // s + 1


def _conv_like(ctx: InferContext, x_shape, kernel, out_channels, pool=False):
    if x_shape is None:
        return None
    nsp = len(x_shape) - 2
    if kernel is None:
        return (x_shape[0], out_channels) + (None,) * nsp
    if len(kernel) != nsp:
        raise ShapeInferenceError(f"kernel {list(kernel)} does not fit input {list(x_shape)}")
    strides = ctx.attr("strides") or [1] * nsp
    dil = ctx.attr("dilations") or [1] * nsp
    pads = ctx.attr("pads") or [0] * (2 * nsp)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    sp = tuple(
        _window_out(x_shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[i + nsp], auto_pad, ceil_mode, pool)
        for i in range(nsp)
    )
    return (x_shape[0], out_channels) + sp


def _kernel_from_w(ctx, w_index=1):
    k = ctx.attr("kernel_shape")
    if k is not None:
        return list(k)
    w = ctx.shape(w_index)
    if w is None or any(not isinstance(d, int) for d in w[2:]):
        return None
    return list(w[2:])


def _check_conv_channels(ctx, x, w):
    if x is None or w is None or len(x) < 2 or len(w) < 2:
        return
    g = ctx.attr("group", 1)
    if isinstance(x[1], int) and isinstance(w[1], int) and x[1] != w[1] * g:
        raise ShapeInferenceError(f"input channels {x[1]} != weight channels {w[1]} * group {g}")
    if len(x) != len(w):
        raise ShapeInferenceError(f"input rank {len(x)} != weight rank {len(w)}")


@shape_rule("Conv", "ConvInteger", "DeformConv")
def _conv(ctx):
    x, w = ctx.shape(0), ctx.shape(1)
    _check_conv_channels(ctx, x, w)
    m = w[0] if w is not None else None
    dtype = TensorProto.INT32 if ctx.op_type == "ConvInteger" else ctx.dtype(0)
    if ctx.op_type == "DeformConv" and ctx.shape(2) is not None and x is not None:
        off = ctx.shape(2)
        return [TensorType(dtype, (x[0], m) + tuple(off[2:]))]
    return [TensorType(dtype, _conv_like(ctx, x, _kernel_from_w(ctx), m))]


@shape_rule("QLinearConv")
def _qlinear_conv(ctx):
    x, w = ctx.shape(0), ctx.shape(3)
    _check_conv_channels(ctx, x, w)
    m = w[0] if w is not None else None
    return [TensorType(ctx.dtype(7), _conv_like(ctx, x, _kernel_from_w(ctx, 3), m))]


@shape_rule("ConvTranspose")
def _conv_transpose(ctx):
    x, w = ctx.shape(0), ctx.shape(1)
    dtype = ctx.dtype(0)
    if x is None:
        return [TensorType(dtype, None)]
    nsp = len(x) - 2
    g = ctx.attr("group", 1)
    m = dim_mul(w[1], g) if w is not None else None
    k = _kernel_from_w(ctx)
    strides = ctx.attr("strides") or [1] * nsp
    dil = ctx.attr("dilations") or [1] * nsp
    out_pad = ctx.attr("output_padding") or [0] * nsp
    out_shape = ctx.attr("output_shape")
    if out_shape is not None:
        sp = tuple(out_shape[-nsp:])
    elif k is None:
        sp = (None,) * nsp
    else:
        pads = ctx.attr("pads") or [0] * (2 * nsp)
        auto_pad = ctx.attr("auto_pad", "NOTSET")
        sp = []
        for i in range(nsp):
            d = x[2 + i]
            if not isinstance(d, int):
                sp.append(None)
            elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                # in * stride, unless that needs negative padding (kernel < stride): onnx and
                # onnxruntime clamp the padding to 0
                full = strides[i] * (d - 1) + out_pad[i] + (k[i] - 1) * dil[i] + 1
                sp.append(min(d * strides[i], full))
            else:
                sp.append(strides[i] * (d - 1) + out_pad[i] + (k[i] - 1) * dil[i] + 1 - pads[i] - pads[i + nsp])
        sp = tuple(sp)
    return [TensorType(dtype, (x[0], m) + sp)]


@shape_rule("MaxPool", "AveragePool", "LpPool")
def _pool(ctx):
    x = ctx.shape(0)
    k = ctx.attr("kernel_shape")
    shape = _conv_like(ctx, x, k, x[1] if x is not None else None, pool=True)
    outs = [TensorType(ctx.dtype(0), shape)]
    if ctx.num_outputs > 1:
        outs.append(TensorType(INT64, shape))
    return outs


@shape_rule("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(ctx):
    x = ctx.shape(0)
    return [TensorType(ctx.dtype(0), None if x is None else tuple(x[:2]) + (1,) * (len(x) - 2))]


@shape_rule("MaxRoiPool")
def _max_roi_pool(ctx):
    x, rois = ctx.shape(0), ctx.shape(1)
    ps = ctx.attr("pooled_shape")
    n = rois[0] if rois is not None else None
    c = x[1] if x is not None else None
    return [TensorType(ctx.dtype(0), (n, c) + tuple(ps))]


@shape_rule("RoiAlign")
def _roi_align(ctx):
    x, rois = ctx.shape(0), ctx.shape(1)
    n = rois[0] if rois is not None else None
    c = x[1] if x is not None else None
    return [TensorType(ctx.dtype(0), (n, c, ctx.attr("output_height", 1), ctx.attr("output_width", 1)))]


# --------------------------------------------------------------------------- normalization
@shape_rule("BatchNormalization")
def _batchnorm(ctx):
    outs = [same(ctx, 0)]
    x = ctx.shape(0)
    c_shape = (x[1],) if x is not None and len(x) > 1 else None
    for i in range(1, 5):
        c_shape = merge_shape(c_shape, ctx.shape(i))
    for i in range(1, ctx.num_outputs):
        outs.append(TensorType(ctx.dtype(1) if i < 3 else ctx.dtype(0), c_shape))
    return outs


@shape_rule("InstanceNormalization", "GroupNormalization", "RMSNormalization", "RotaryEmbedding",
            "SwiGLU")
def _norm_same(ctx):
    return [same(ctx, 0)]


@shape_rule("LayerNormalization")
def _layernorm(ctx):
    x = ctx.shape(0)
    outs = [same(ctx, 0)]
    if ctx.num_outputs > 1:
        stash = ctx.attr("stash_type", TensorProto.FLOAT)
        if x is None:
            red = None
        else:
            axis = normalize_axis(ctx.attr("axis", -1), len(x))
            red = tuple(x[:axis]) + (1,) * (len(x) - axis)
        outs += [TensorType(stash, red)] * (ctx.num_outputs - 1)
    return outs


# --------------------------------------------------------------------------- matmul / gemm
def matmul_shape(a, b):
    if a is None or b is None:
        return None
    if len(a) == 0 or len(b) == 0:
        raise ShapeInferenceError("MatMul inputs must not be scalars")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    k1, k2 = a2[-1], b2[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ShapeInferenceError(f"inner dims differ: {list(a)} @ {list(b)}")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = tuple(batch) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@shape_rule("MatMul")
def _matmul(ctx):
    return [TensorType(ctx.dtype(0), matmul_shape(ctx.shape(0), ctx.shape(1)))]


@shape_rule("MatMulInteger")
def _matmul_int(ctx):
    return [TensorType(TensorProto.INT32, matmul_shape(ctx.shape(0), ctx.shape(1)))]


@shape_rule("QLinearMatMul")
def _qlinear_matmul(ctx):
    return [TensorType(ctx.dtype(7), matmul_shape(ctx.shape(0), ctx.shape(3)))]


@shape_rule("Gemm")
def _gemm(ctx):
    a, b = ctx.shape(0), ctx.shape(1)
    dtype = ctx.dtype(0)
    if a is None or b is None:
        return [TensorType(dtype, (None, None))]
    if len(a) != 2 or len(b) != 2:
        raise ShapeInferenceError(f"Gemm inputs must be 2-D, got {list(a)} and {list(b)}")
    if ctx.attr("transA", 0):
        a = a[::-1]
    if ctx.attr("transB", 0):
        b = b[::-1]
    if isinstance(a[1], int) and isinstance(b[0], int) and a[1] != b[0]:
        raise ShapeInferenceError(f"inner dims differ: {list(a)} @ {list(b)} (after transA/transB)")
    out = (a[0], b[1])
    c = ctx.shape(2)
    if c is not None:
        broadcast_shapes(out, c)  # checks that C broadcasts to (M, N)
    return [TensorType(dtype, out)]


# --------------------------------------------------------------------------- recurrent
@shape_rule("RNN", "GRU", "LSTM")
def _rnn(ctx):
    x = ctx.shape(0)
    dtype = ctx.dtype(0)
    hidden = ctx.attr("hidden_size")
    if hidden is None and ctx.shape(2) is not None:
        r = ctx.shape(2)[2]
        gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[ctx.op_type]
        hidden = dim_div(r, gates) if r is not None else None
    ndir = 2 if ctx.attr("direction", "forward") == "bidirectional" else 1
    layout = ctx.attr("layout", 0)
    if x is None:
        seq = batch = None
    elif layout == 0:
        seq, batch = x[0], x[1]
    else:
        batch, seq = x[0], x[1]
    if layout == 0:
        y = (seq, ndir, batch, hidden)
        yh = (ndir, batch, hidden)
    else:
        y = (batch, seq, ndir, hidden)
        yh = (batch, ndir, hidden)
    outs = [TensorType(dtype, y), TensorType(dtype, yh), TensorType(dtype, yh)]
    return outs[: ctx.num_outputs]


# --------------------------------------------------------------------------- attention
@shape_rule("Attention")
def _attention(ctx):
    q, k, v = ctx.shape(0), ctx.shape(1), ctx.shape(2)
    dtype = ctx.dtype(0)
    if q is None or k is None or v is None:
        return [TensorType(dtype, None)] + [None] * (ctx.num_outputs - 1)
    qh = ctx.attr("q_num_heads")
    kvh = ctx.attr("kv_num_heads")
    if len(q) == 4:
        b, qh, qs, _ = q
        kvh, kvs, kd = k[1], k[2], k[3]
        vd = v[3]
    else:
        b, qs = q[0], q[1]
        kvs = k[1]
        kd = dim_div(k[2], kvh) if kvh else None
        vd = dim_div(v[2], kvh) if kvh else None
    past = ctx.shape(4)
    total = dim_add(past[2], kvs) if past is not None else kvs
    y = (b, qh, qs, vd) if len(q) == 4 else (b, qs, dim_mul(qh, vd) if qh is not None else None)
    outs = [TensorType(dtype, y),
            TensorType(dtype, (b, kvh, total, kd)),
            TensorType(dtype, (b, kvh, total, vd)),
            TensorType(dtype, (b, qh, qs, total))]
    return outs[: ctx.num_outputs]


@shape_rule("LinearAttention")
def _linear_attention(ctx):
    q, k, v = ctx.shape(0), ctx.shape(1), ctx.shape(2)
    qh, kvh = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    if q is None or v is None:
        return [TensorType(ctx.dtype(0), None)] + [None] * (ctx.num_outputs - 1)
    dv = dim_div(v[2], kvh) if kvh else None
    dk = dim_div(k[2], kvh) if k is not None and kvh else None
    state = (q[0], kvh, dk, dv)
    if ctx.shape(3) is not None:  # the present state has the past state's shape
        state = merge_shape(state, ctx.shape(3))
    outs = [TensorType(ctx.dtype(0), (q[0], q[1], dim_mul(qh, dv) if qh and dv is not None else None)),
            TensorType(ctx.dtype(0), state)]
    return outs[: ctx.num_outputs]


@shape_rule("CausalConvWithState")
def _causal_conv(ctx):
    x, w = ctx.shape(0), ctx.shape(1)
    outs = [same(ctx, 0)]
    if ctx.num_outputs > 1:
        km1 = dim_sub(w[2], 1) if w is not None and w[2] is not None else None
        state = None if x is None else (x[0], x[1], km1)
        if ctx.shape(3) is not None:
            state = merge_shape(state, ctx.shape(3))
        outs.append(TensorType(ctx.dtype(0), state))
    return outs


# --------------------------------------------------------------------------- sampling
@shape_rule("GridSample")
def _grid_sample(ctx):
    x, g = ctx.shape(0), ctx.shape(1)
    if x is None or g is None:
        return [TensorType(ctx.dtype(0), None)]
    return [TensorType(ctx.dtype(0), (merge_dim(x[0], g[0]), x[1]) + tuple(g[1:-1]))]


@shape_rule("AffineGrid")
def _affine_grid(ctx):
    size = ctx.int_list(1)
    t = ctx.shape(0)
    if size is None:
        n = ctx.shape(1)[0] if ctx.shape(1) else None
        return [TensorType(ctx.dtype(0), None if not isinstance(n, int) else (None,) * (n - 1) + (n - 2,))]
    size = [value_to_dim(s) for s in size]
    n = merge_dim(t[0], size[0]) if t is not None else size[0]
    return [TensorType(ctx.dtype(0), (n,) + tuple(size[2:]) + (len(size) - 2,))]


@shape_rule("NonMaxSuppression")
def _nms(ctx):
    return [TensorType(INT64, (ctx.fresh_dim(), 3))]


# --------------------------------------------------------------------------- losses
@shape_rule("SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss")
def _loss(ctx):
    red = ctx.attr("reduction", "mean")
    labels = ctx.shape(1)
    outs = [TensorType(ctx.dtype(0), labels if red == "none" else ())]
    if ctx.num_outputs > 1:
        outs.append(same(ctx, 0))
    return outs


