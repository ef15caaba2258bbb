"""Control flow (If/Loop/Scan/SequenceMap), sequences, optionals, signal, strings, images."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from tuili.errors import ShapeInferenceError

from .registry import (
    BOOL,
    INT64,
    InferContext,
    OptionalType,
    SequenceType,
    TensorType,
    broadcast_shapes,
    normalize_axis,
    shape_rule,
    unify_shape,
)


def unify_type(a, b):
    """The join of two types of the same value (branches, sequence elements, loop iterations)."""
    if a is None or b is None:
        return None
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        dtype = a.dtype if a.dtype == b.dtype else None
        return TensorType(dtype, unify_shape(a.shape, b.shape))
    if isinstance(a, SequenceType) and isinstance(b, SequenceType):
        return SequenceType(unify_type(a.elem, b.elem))
    if isinstance(a, OptionalType) and isinstance(b, OptionalType):
        return OptionalType(unify_type(a.elem, b.elem))
    return None


def _py_scalar(v):
    x = np.asarray(v).reshape(-1)[0]
    if isinstance(x, (bool, np.bool_, np.integer)):
        return int(x)
    return x


def loop_state_shape(body, init):
    """Shape of a loop-carried value: what the body produces, where it agrees with the initial value.
    A concrete dim against a symbol is the concrete dim (the symbol must equal it for the body to type)."""
    if body is None or init is None or len(body) != len(init):
        return None
    out = []
    for b, i in zip(body, init):
        if b == i:
            out.append(b)
        elif isinstance(b, int) and isinstance(i, str) or isinstance(i, int) and isinstance(b, str):
            out.append(b if isinstance(b, int) else i)
        else:
            out.append(None)
    return tuple(out)


def _scan_state_shape(body, init):
    """A Scan state keeps one shape through all iterations: what either side knows holds."""
    if body is None:
        return init
    if init is None or len(body) != len(init):
        return body
    out = []
    for b, i in zip(body, init):
        if b is None or i is None:
            out.append(i if b is None else b)
        else:
            out.append(loop_state_shape((b,), (i,))[0])
    return tuple(out)


def _copy(t):
    if isinstance(t, TensorType):
        return TensorType(t.dtype, t.shape)
    return t


# --------------------------------------------------------------------------- control flow
@shape_rule("If")
def _if(ctx: InferContext):
    if ctx.subgraph_infer is None:
        return [None] * ctx.num_outputs
    cond = ctx.value(0)
    live = None
    if cond is not None and np.size(cond) == 1 and isinstance(_py_scalar(cond), int):
        live = bool(_py_scalar(cond))
    # a branch that cannot run is still typed, but its inconsistencies are not errors
    then = ctx.subgraph_infer("then_branch", [], lenient=live is False)
    els = ctx.subgraph_infer("else_branch", [], lenient=live is True)
    if len(then) != ctx.num_outputs or len(els) != ctx.num_outputs:
        raise ShapeInferenceError(
            f"branches have {len(then)} and {len(els)} outputs but the node has {ctx.num_outputs}")
    if live is not None:
        return [_copy(t) for t in (then if live else els)]
    outs = []
    for a, b in zip(then, els):
        if isinstance(a, TensorType) and isinstance(b, TensorType) and a.dtype and b.dtype and a.dtype != b.dtype:
            raise ShapeInferenceError(f"branches disagree on element type: {a} vs {b}")
        outs.append(unify_type(a, b))
    return outs


@shape_rule("Loop")
def _loop(ctx):
    carried = [_copy(t) for t in ctx.inputs[2:]]
    n_carried = len(carried)
    if ctx.subgraph_infer is None:
        return [None] * ctx.num_outputs
    body_in = [TensorType(INT64, ()), TensorType(BOOL, ())] + carried
    body_out = ctx.subgraph_infer("body", body_in)
    outs = []
    for i in range(n_carried):
        b = body_out[1 + i] if 1 + i < len(body_out) else None
        init = carried[i]
        if isinstance(b, TensorType) and isinstance(init, TensorType):
            dtype = b.dtype or init.dtype
            outs.append(TensorType(dtype, loop_state_shape(b.shape, init.shape)))
        elif init is None or b is None or type(b) is not type(init):
            outs.append(b)  # e.g. an empty optional sequence that the body turns into a sequence
        else:
            outs.append(unify_type(b, init))
    trip = None
    m = ctx.value(0) if ctx.has_input(0) else None
    if m is not None and not ctx.has_input(1):
        x = _py_scalar(m)
        trip = x if isinstance(x, (int, str)) else None  # a count taken from a shape may be a symbol
    for t in body_out[1 + n_carried:]:
        if isinstance(t, TensorType):
            outs.append(TensorType(t.dtype, None if t.shape is None else (trip,) + tuple(t.shape)))
        else:
            outs.append(None)
    return outs[: ctx.num_outputs] + [None] * (ctx.num_outputs - len(outs))


@shape_rule("Scan")
def _scan(ctx):
    if ctx.subgraph_infer is None:
        return [None] * ctx.num_outputs
    m = ctx.attr("num_scan_inputs")
    n_in = len(ctx.inputs)
    if ctx.opset < 9:
        return _scan8(ctx, m)
    n_state = n_in - m
    in_axes = ctx.attr("scan_input_axes") or [0] * m
    states = [_copy(t) for t in ctx.inputs[:n_state]]
    slices = []
    seq_len = None
    for j in range(m):
        t = ctx.inputs[n_state + j]
        if t is None or t.shape is None:
            slices.append(TensorType(getattr(t, "dtype", None), None))
            continue
        ax = normalize_axis(in_axes[j], len(t.shape))
        if seq_len is None:
            seq_len = t.shape[ax]
        slices.append(TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if i != ax)))
    body_out = ctx.subgraph_infer("body", states + slices)
    outs = []
    for i in range(n_state):
        b = body_out[i] if i < len(body_out) else None
        outs.append(TensorType(b.dtype, _scan_state_shape(b.shape, states[i].shape) if states[i] else b.shape)
                    if isinstance(b, TensorType) else None)
    k = len(body_out) - n_state
    out_axes = ctx.attr("scan_output_axes") or [0] * k
    for j, t in enumerate(body_out[n_state:]):
        if not isinstance(t, TensorType) or t.shape is None:
            outs.append(TensorType(getattr(t, "dtype", None), None))
            continue
        r = len(t.shape) + 1
        ax = normalize_axis(out_axes[j], r)
        shp = list(t.shape)
        shp.insert(ax, seq_len)
        outs.append(TensorType(t.dtype, tuple(shp)))
    return outs[: ctx.num_outputs]


def _scan8(ctx, m):
    """Scan-8: optional sequence_lens first; every tensor has a leading batch dim; scan axis 1."""
    ins = ctx.inputs[1:]
    n_state = len(ins) - m
    batch = seq_len = None
    body_in = []
    for j, t in enumerate(ins):
        if not isinstance(t, TensorType) or t.shape is None:
            body_in.append(TensorType(getattr(t, "dtype", None), None))
            continue
        batch = batch if batch is not None else t.shape[0]
        if j < n_state:
            body_in.append(TensorType(t.dtype, tuple(t.shape[1:])))
        else:
            seq_len = seq_len if seq_len is not None else t.shape[1]
            body_in.append(TensorType(t.dtype, tuple(t.shape[2:])))
    body_out = ctx.subgraph_infer("body", body_in)
    outs = []
    for i, t in enumerate(body_out):
        if not isinstance(t, TensorType) or t.shape is None:
            outs.append(TensorType(getattr(t, "dtype", None), None))
        elif i < n_state:
            outs.append(TensorType(t.dtype, (batch,) + tuple(t.shape)))
        else:
            outs.append(TensorType(t.dtype, (batch, seq_len) + tuple(t.shape)))
    return outs[: ctx.num_outputs]


@shape_rule("SequenceMap")
def _sequence_map(ctx):
    if ctx.subgraph_infer is None:
        return [None] * ctx.num_outputs
    body_in = [t.elem if isinstance(t, SequenceType) else _copy(t) for t in ctx.inputs]
    body_out = ctx.subgraph_infer("body", body_in)
    return [SequenceType(_copy(t)) for t in body_out]


def _loosen(t):
    # elements of a mapped sequence may differ in shape: keep rank and dtype only
    if isinstance(t, TensorType) and t.shape is not None:
        return TensorType(t.dtype, tuple(d if isinstance(d, str) else None for d in t.shape))
    return t


# --------------------------------------------------------------------------- sequences / optional
@shape_rule("SequenceConstruct")
def _seq_construct(ctx):
    elem = None
    for i, t in enumerate(ctx.inputs):
        elem = _copy(t) if i == 0 else unify_type(elem, t)
    return [SequenceType(elem)]


@shape_rule("SequenceEmpty")
def _seq_empty(ctx):
    return [SequenceType(TensorType(ctx.attr("dtype", TensorProto.FLOAT), None))]


@shape_rule("SequenceInsert")
def _seq_insert(ctx):
    seq, t = ctx.input(0), ctx.input(1)
    if isinstance(seq, SequenceType) and (seq.elem is None or seq.elem.shape is None) and isinstance(t, TensorType):
        # nothing known about the elements already there: the inserted tensor is all we know
        return [SequenceType(TensorType(t.dtype or getattr(seq.elem, "dtype", None), t.shape))]
    elem = unify_type(seq.elem, t) if isinstance(seq, SequenceType) else None
    return [SequenceType(elem)]


@shape_rule("SequenceErase")
def _seq_erase(ctx):
    return [ctx.input(0)]


@shape_rule("SequenceAt")
def _seq_at(ctx):
    seq = ctx.input(0)
    return [_copy(seq.elem) if isinstance(seq, SequenceType) else None]


@shape_rule("SequenceLength")
def _seq_len(ctx):
    return [TensorType(INT64, ())]


@shape_rule("SplitToSequence")
def _split_to_seq(ctx):
    shape = ctx.shape(0)
    dtype = ctx.dtype(0)
    if shape is None:
        return [SequenceType(TensorType(dtype, None))]
    axis = normalize_axis(ctx.attr("axis", 0), len(shape))
    if not ctx.has_input(1):
        if ctx.attr("keepdims", 1):
            return [SequenceType(TensorType(dtype, shape[:axis] + (1,) + shape[axis + 1:]))]
        return [SequenceType(TensorType(dtype, shape[:axis] + shape[axis + 1:]))]
    split = ctx.int_list(1)
    d = None
    if split is not None and ctx.rank(1) == 0:
        d = split[0] if isinstance(shape[axis], int) and shape[axis] % split[0] == 0 else None
    elif split is not None and len(set(split)) == 1:
        d = split[0]
    return [SequenceType(TensorType(dtype, shape[:axis] + (d,) + shape[axis + 1:]))]


@shape_rule("ConcatFromSequence")
def _concat_from_seq(ctx):
    seq = ctx.input(0)
    elem = seq.elem if isinstance(seq, SequenceType) else None
    if elem is None or elem.shape is None:
        return [TensorType(getattr(elem, "dtype", None), None)]
    new_axis = ctx.attr("new_axis", 0)
    r = len(elem.shape) + (1 if new_axis else 0)
    axis = normalize_axis(ctx.attr("axis"), r)
    shp = list(elem.shape)
    if new_axis:
        shp.insert(axis, None)
    else:
        shp[axis] = None
    return [TensorType(elem.dtype, tuple(shp))]


@shape_rule("Optional")
def _optional(ctx):
    if ctx.has_input(0):
        return [OptionalType(_copy(ctx.input(0)))]
    tp = ctx.attr("type")
    return [OptionalType(_type_from_proto(tp)) if tp is not None else OptionalType(None)]


def _type_from_proto(tp):
    if tp is None:
        return None
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        return TensorType(tt.elem_type or None, shape)
    if kind == "sequence_type":
        return SequenceType(_type_from_proto(tp.sequence_type.elem_type))
    if kind == "optional_type":
        return OptionalType(_type_from_proto(tp.optional_type.elem_type))
    return None


@shape_rule("OptionalGetElement")
def _opt_get(ctx):
    t = ctx.input(0)
    return [_copy(t.elem) if isinstance(t, OptionalType) else _copy(t)]


@shape_rule("OptionalHasElement")
def _opt_has(ctx):
    return [TensorType(BOOL, ())]


# --------------------------------------------------------------------------- signal
def _scalar_value(ctx, i):
    v = ctx.value(i)
    if v is None:
        return None
    x = np.asarray(v).reshape(-1)
    if x.size != 1 or isinstance(x[0], str) or x[0] is None:
        return None
    return x[0].item() if hasattr(x[0], "item") else x[0]


@shape_rule("DFT")
def _dft(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    r = len(shape)
    onesided, inverse = ctx.attr("onesided", 0), ctx.attr("inverse", 0)
    if ctx.opset < 20:
        axis = ctx.attr("axis", 1)
    else:
        axis = _scalar_value(ctx, 2) if ctx.has_input(2) else -2
    n_given = None
    if ctx.has_input(1):
        n_given = _scalar_value(ctx, 1)
        n_given = int(n_given) if n_given is not None else None
    if axis is None:
        last = 1 if onesided and inverse else 2
        if ctx.has_input(1) or onesided:
            return [TensorType(ctx.dtype(0), (None,) * (r - 1) + (last,))]
        return [TensorType(ctx.dtype(0), tuple(shape[:-1]) + (last,))]
    axis = normalize_axis(int(axis), r)
    n = shape[axis] if not ctx.has_input(1) else n_given
    out = list(shape)
    if onesided and inverse:
        if not ctx.has_input(1):
            n = 2 * (n - 1) if isinstance(n, int) else None
        out[axis] = n
        out[-1] = 1
    else:
        if onesided:
            n = n // 2 + 1 if isinstance(n, int) else None
        out[axis] = n
        out[-1] = 2
    return [TensorType(ctx.dtype(0), tuple(out))]


@shape_rule("STFT")
def _stft(ctx):
    shape = ctx.shape(0)
    step = _scalar_value(ctx, 1)
    flen = _scalar_value(ctx, 3) if ctx.has_input(3) else None
    if flen is None and ctx.has_input(2) and ctx.shape(2) is not None:
        flen = ctx.shape(2)[0]
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    b, n = shape[0], shape[1]
    frames = None
    if isinstance(n, int) and isinstance(flen, int) and step:
        frames = (n - flen) // int(step) + 1
    bins = None
    if isinstance(flen, int):
        bins = flen // 2 + 1 if ctx.attr("onesided", 1) else flen
    return [TensorType(ctx.dtype(0), (b, frames, bins, 2))]


@shape_rule("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(ctx):
    n = _scalar_value(ctx, 0)
    return [TensorType(ctx.attr("output_datatype", TensorProto.FLOAT), (int(n) if n is not None else None,))]


@shape_rule("MelWeightMatrix")
def _mel(ctx):
    bins = _scalar_value(ctx, 0)
    dft = _scalar_value(ctx, 1)
    rows = int(dft) // 2 + 1 if dft is not None else None
    return [TensorType(ctx.attr("output_datatype", TensorProto.FLOAT), (rows, int(bins) if bins is not None else None))]


# --------------------------------------------------------------------------- strings / text / images
@shape_rule("StringConcat")
def _string_concat(ctx):
    return [TensorType(TensorProto.STRING, broadcast_shapes(ctx.shape(0), ctx.shape(1)))]


@shape_rule("RegexFullMatch")
def _regex(ctx):
    return [TensorType(BOOL, ctx.shape(0))]


@shape_rule("StringSplit")
def _string_split(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(TensorProto.STRING, None), TensorType(INT64, None)]
    return [TensorType(TensorProto.STRING, tuple(shape) + (None,)), TensorType(INT64, tuple(shape))]


@shape_rule("StringNormalizer")
def _string_normalizer(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(TensorProto.STRING, None)]
    if ctx.attr("stopwords"):
        return [TensorType(TensorProto.STRING, tuple(shape[:-1]) + (None,))]
    return [TensorType(TensorProto.STRING, tuple(shape))]


@shape_rule("TfIdfVectorizer")
def _tfidf(ctx):
    shape = ctx.shape(0)
    idx = ctx.attr("ngram_indexes") or [0]
    width = max(idx) + 1
    if shape is None:
        return [TensorType(TensorProto.FLOAT, None)]
    if len(shape) == 1:
        return [TensorType(TensorProto.FLOAT, (width,))]
    return [TensorType(TensorProto.FLOAT, (shape[0], width))]


@shape_rule("ImageDecoder")
def _image_decoder(ctx):
    c = 1 if ctx.attr("pixel_format", "RGB") == "Grayscale" else 3
    return [TensorType(TensorProto.UINT8, (None, None, c))]


# --------------------------------------------------------------------------- random
@shape_rule("RandomUniformLike", "RandomNormalLike")
def _random_like(ctx):
    return [TensorType(ctx.attr("dtype", ctx.dtype(0)), ctx.shape(0))]


@shape_rule("RandomUniform", "RandomNormal")
def _random(ctx):
    return [TensorType(ctx.attr("dtype", TensorProto.FLOAT), tuple(ctx.attr("shape")))]


@shape_rule("Multinomial")
def _multinomial(ctx):
    shape = ctx.shape(0)
    return [TensorType(ctx.attr("dtype", TensorProto.INT32),
                       (shape[0] if shape else None, ctx.attr("sample_size", 1)))]


# --------------------------------------------------------------------------- training / preview domains
@shape_rule("Adagrad", "Momentum", domain="ai.onnx.preview.training")
def _optimizer(ctx):
    # inputs: R, T, n tensors X, n gradients G, n accumulators; outputs: n new X, n new accumulators
    n = (len(ctx.inputs) - 2) // 3
    xs = [ctx.input(2 + i) for i in range(n)]
    outs = []
    for _ in range(ctx.num_outputs // max(n, 1)):
        outs.extend(TensorType(t.dtype, t.shape) if isinstance(t, TensorType) else None for t in xs)
    return outs[: ctx.num_outputs]


@shape_rule("Adam", domain="ai.onnx.preview.training")
def _adam(ctx):
    n = (len(ctx.inputs) - 2) // 4
    xs = [ctx.input(2 + i) for i in range(n)]
    outs = []
    for _ in range(3):
        outs.extend(TensorType(t.dtype, t.shape) if isinstance(t, TensorType) else None for t in xs)
    return outs[: ctx.num_outputs]


@shape_rule("FlexAttention", domain="ai.onnx.preview")
def _flex_attention(ctx):
    q, v = ctx.shape(0), ctx.shape(2)
    if q is None or v is None:
        return [TensorType(ctx.dtype(0), None)]
    return [TensorType(ctx.dtype(0), tuple(q[:-1]) + (v[-1],))]


