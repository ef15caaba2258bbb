"""com.microsoft contrib ops that onnxruntime's optimizers write into saved models (kernels: tuili.ops.contrib)."""
from __future__ import annotations

from onnx import TensorProto

from .nn import _conv, _gemm, matmul_shape
from .registry import TensorType, broadcast_shapes, dim_add, dim_div, dim_mul, same, shape_rule

MS = "com.microsoft"


@shape_rule("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "QLinearSigmoid", "QLinearLeakyRelu", "BiasAdd",
            domain=MS)
def _same(ctx):
    return [same(ctx, 0)]


shape_rule("FusedConv", domain=MS)(_conv)


@shape_rule("FusedMatMul", domain=MS)
def _fused_matmul(ctx):
    a, b = ctx.shape(0), ctx.shape(1)
    if ctx.attr("transBatchA", 0) or ctx.attr("transBatchB", 0):
        return [TensorType(ctx.dtype(0), None)]
    if a is not None and ctx.attr("transA", 0) and len(a) >= 2:
        a = tuple(a[:-2]) + (a[-1], a[-2])
    if b is not None and ctx.attr("transB", 0) and len(b) >= 2:
        b = tuple(b[:-2]) + (b[-1], b[-2])
    return [TensorType(ctx.dtype(0), matmul_shape(a, b))]


@shape_rule("MatMulIntegerToFloat", domain=MS)
def _matmul_int_to_float(ctx):
    return [TensorType(ctx.dtype(2), matmul_shape(ctx.shape(0), ctx.shape(1)))]


@shape_rule("MatMulNBits", domain=MS)
def _matmul_nbits(ctx):
    a = ctx.shape(0)
    return [TensorType(ctx.dtype(0), None if a is None else tuple(a[:-1]) + (ctx.attr("N"),))]


@shape_rule("DynamicQuantizeMatMul", domain=MS)
def _dyn_quant_matmul(ctx):
    return [TensorType(ctx.dtype(0), matmul_shape(ctx.shape(0), ctx.shape(1)))]


@shape_rule("QLinearAdd", "QLinearMul", domain=MS)
def _qlinear_binary(ctx):
    return [TensorType(ctx.dtype(0), broadcast_shapes(ctx.shape(0), ctx.shape(3)))]


@shape_rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def _skip_layer_norm(ctx):
    x = ctx.shape(0)
    stats = None if x is None else tuple(x[:-1]) + (1,)
    outs = [same(ctx, 0), TensorType(TensorProto.FLOAT, stats), TensorType(TensorProto.FLOAT, stats), same(ctx, 0)]
    if ctx.op_type == "SkipSimplifiedLayerNormalization":
        outs = [outs[0], outs[2], outs[3]]
    return outs[: ctx.num_outputs]


shape_rule("FusedGemm", domain=MS)(_gemm)
shape_rule("RotaryEmbedding", domain=MS)(_same)


@shape_rule("EmbedLayerNormalization", domain=MS)
def _embed_layer_norm(ctx):
    ids, word = ctx.shape(0), ctx.shape(2)
    hidden = None if word is None else word[1]
    out = None if ids is None else tuple(ids) + (hidden,)
    batch = None if ids is None else (ids[0],)
    return [TensorType(ctx.dtype(2), out), TensorType(TensorProto.INT32, batch),
            TensorType(ctx.dtype(2), out)][: ctx.num_outputs]


def _heads_dim(hidden, heads):
    """head size from a hidden size and a head count (None when unknown)."""
    return None if hidden is None or not heads else dim_div(hidden, heads)


@shape_rule("Attention", domain=MS)
def _attention(ctx):
    x, w, past = ctx.shape(0), ctx.shape(1), ctx.shape(4)
    sizes = ctx.attr("qkv_hidden_sizes")
    v_hidden = sizes[2] if sizes else (None if w is None or not isinstance(w[1], int) else w[1] // 3)
    out = None if x is None else (x[0], x[1], v_hidden)
    outs = [TensorType(ctx.dtype(0), out)]
    if ctx.num_outputs > 1:
        present = None
        if x is not None and past is not None:
            present = (2, x[0], past[2], dim_add(past[3], x[1]), past[4])
        elif x is not None and w is not None and sizes is None and isinstance(w[1], int):
            n = ctx.attr("num_heads")
            present = (2, x[0], n, x[1], _heads_dim(w[1] // 3, n))
        outs.append(TensorType(ctx.dtype(0), present))
    return outs


@shape_rule("MultiHeadAttention", domain=MS)
def _multi_head_attention(ctx):
    q, k, v, past = ctx.shape(0), ctx.shape(1), ctx.shape(2), ctx.shape(6)
    n = ctx.attr("num_heads")
    v_hidden = None if v is None else (v[-1] if len(v) == 3 else dim_mul(v[1], v[3]))
    out = None if q is None else (q[0], q[1], v_hidden)
    kv_len = None if k is None else (k[2] if len(k) == 4 else k[1])
    head = None if k is None else (k[3] if len(k) == 4 else _heads_dim(k[-1], n))
    outs = [TensorType(ctx.dtype(0), out)]
    total = kv_len if past is None else dim_add(past[2], kv_len)
    present = None if q is None else (q[0], n, total, head)
    return (outs + [TensorType(ctx.dtype(0), present)] * 2)[: ctx.num_outputs]


@shape_rule("GroupQueryAttention", domain=MS)
def _group_query_attention(ctx):
    q, past = ctx.shape(0), ctx.shape(3)
    n, kvn = ctx.attr("num_heads"), ctx.attr("kv_num_heads")
    head = None
    if q is not None and isinstance(q[2], int):
        head = q[2] // n if ctx.has_input(1) else q[2] // (n + 2 * kvn)
    out = None if q is None else (q[0], q[1], None if head is None else n * head)
    total = ctx.int_list_concrete(6)
    length = None
    if total is not None and past is not None and isinstance(past[2], int):
        length = max(total[0], past[2])
    present = None if q is None else (q[0], kvn, length, head)
    return ([TensorType(ctx.dtype(0), out)] + [TensorType(ctx.dtype(0), present)] * 2)[: ctx.num_outputs]
