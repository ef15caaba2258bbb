"""Elementwise ops: unary, binary/variadic broadcasting, comparisons, logic, Cast, Where."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from tuili.errors import ShapeInferenceError

from .registry import BOOL, InferContext, TensorType, broadcast_shapes, dim_add, dim_div, dim_mul, dim_sub, same, shape_rule

UNARY_SAME = (
    "Abs Acos Acosh Asin Asinh Atan Atanh Ceil Cos Cosh Erf Exp Floor Log Neg Reciprocal Relu Round "
    "Sigmoid Sign Sin Sinh Sqrt Tan Tanh Softplus Softsign Elu Celu Selu LeakyRelu HardSigmoid HardSwish "
    "Mish Gelu ThresholdedRelu Shrink BitwiseNot Not Swish Softmax LogSoftmax Hardmax LpNormalization "
    "MeanVarianceNormalization LRN Clip Trilu CumSum CumProd ReverseSequence Scatter ScatterElements "
    "ScatterND TensorScatter Identity"
).split()


@shape_rule(*UNARY_SAME)
def _unary(ctx: InferContext):
    out = same(ctx, 0)
    if ctx.op_type == "Identity":
        if ctx.value(0) is not None:
            ctx.set_value(0, ctx.value(0))
        return [ctx.input(0)]
    return [out] + [None] * (ctx.num_outputs - 1)


@shape_rule("IsInf", "IsNaN")
def _is(ctx):
    return [TensorType(BOOL, ctx.shape(0))]


@shape_rule("Bernoulli")
def _bernoulli(ctx):
    return [TensorType(ctx.attr("dtype", ctx.dtype(0)), ctx.shape(0))]


@shape_rule("Dropout")
def _dropout(ctx):
    outs = [same(ctx, 0)]
    if ctx.num_outputs > 1:
        outs.append(TensorType(BOOL, ctx.shape(0)))
    return outs


# --------------------------------------------------------------------------- value arithmetic
def _trunc_div(a, b):
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            return None
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    return dim_div(a, b)


def _mod(a, b):
    if isinstance(a, int) and isinstance(b, int) and b != 0:
        return a % b
    return None


def _cmp(f):
    def g(a, b):
        if isinstance(a, int) and isinstance(b, int):
            return int(f(a, b))
        if f is _eq and a is not None and a == b:
            return 1
        # a symbolic dim is some unknown size >= 0: decide comparisons that hold for all of them
        if isinstance(a, str) and isinstance(b, int):
            results = {int(f(x, b)) for x in (0, max(b, 0), max(b, 0) + 1, 1 << 40)} if b >= 0 else \
                {int(f(x, b)) for x in (0, 1 << 40)}
            return results.pop() if len(results) == 1 else None
        if isinstance(b, str) and isinstance(a, int):
            results = {int(f(a, x)) for x in (0, max(a, 0), max(a, 0) + 1, 1 << 40)} if a >= 0 else \
                {int(f(a, x)) for x in (0, 1 << 40)}
            return results.pop() if len(results) == 1 else None
        return None

    return g


def _eq(a, b):
    return a == b


_VALUE_OPS = {
    "Add": dim_add,
    "Sub": dim_sub,
    "Mul": dim_mul,
    "Div": _trunc_div,
    "Mod": _mod,
    "Max": lambda a, b: max(a, b) if isinstance(a, int) and isinstance(b, int) else (a if a == b else None),
    "Min": lambda a, b: min(a, b) if isinstance(a, int) and isinstance(b, int) else (a if a == b else None),
    "Equal": _cmp(_eq),
    "Less": _cmp(lambda a, b: a < b),
    "Greater": _cmp(lambda a, b: a > b),
    "LessOrEqual": _cmp(lambda a, b: a <= b),
    "GreaterOrEqual": _cmp(lambda a, b: a >= b),
}

MAX_VALUE_ELEMS = 64


def _is_intlike(v) -> bool:
    return v.dtype == object or v.dtype.kind in "iub"


def _propagate_binary(ctx, op, out_dtype):
    vals = [ctx.value(i) for i in range(len(ctx.inputs))]
    if len(vals) < 2 or any(v is None for v in vals):
        return
    vals = [np.asarray(v) for v in vals]
    if any(v.size > MAX_VALUE_ELEMS for v in vals):
        return
    if not all(_is_intlike(v) for v in vals):
        return  # float constants: folding them is the passes' job
    if all(v.dtype != object for v in vals) and op in ("Add", "Sub", "Mul"):
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op]
        out = fn(vals[0], vals[1])
        ctx.set_value(0, out.astype(_np_dtype(out_dtype, out.dtype)))
        return
    f = _VALUE_OPS[op]
    try:
        shape = np.broadcast_shapes(*(v.shape for v in vals))
    except ValueError:
        return
    a = np.broadcast_to(vals[0], shape).reshape(-1)
    b = np.broadcast_to(vals[1], shape).reshape(-1)
    res = np.empty(len(a), dtype=object)
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        res[i] = f(_py(x), _py(y))
    res = res.reshape(shape)
    ctx.set_value(0, _tidy(res, out_dtype))


def _py(x):
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    return x


def _np_dtype(onnx_dtype, fallback):
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        return tensor_dtype_to_np_dtype(onnx_dtype)
    except Exception:  # noqa: BLE001
        return fallback


def _tidy(arr: np.ndarray, onnx_dtype):
    """Object array back to a numeric array when every entry is a known int."""
    flat = arr.reshape(-1).tolist()
    if all(isinstance(x, int) for x in flat):
        return np.asarray(flat, dtype=_np_dtype(onnx_dtype, np.int64)).reshape(arr.shape)
    return arr


def _binary(ctx: InferContext, out_dtype=None):
    shapes = [ctx.shape(i) for i in range(len(ctx.inputs)) if ctx.has_input(i)]
    if len(shapes) < len(ctx.inputs):
        shape = None
    else:
        shape = broadcast_shapes(*shapes)
    dtype = out_dtype if out_dtype is not None else ctx.dtype(0)
    if out_dtype is None:
        dts = {dt for i in range(len(ctx.inputs)) if (dt := ctx.dtype(i)) is not None}
        if len(dts) > 1 and ctx.op_type not in ("Pow", "BitShift", "PRelu"):
            names = ", ".join(TensorProto.DataType.Name(d) for d in sorted(dts))
            raise ShapeInferenceError(f"inputs have different element types ({names})")
        if dtype is None and dts:
            dtype = next(iter(dts))
    return TensorType(dtype, shape)


@shape_rule("Add", "Sub", "Mul", "Div", "Pow", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
            "PRelu", "Max", "Min", "Mean", "Sum")
def _arith(ctx):
    if ctx.op_type == "PRelu" and ctx.opset < 7:  # legacy: the slope applies per channel, y has x's type
        return [TensorType(ctx.dtype(0), ctx.shape(0))]
    out = _binary(ctx)
    if ctx.op_type in _VALUE_OPS and len(ctx.inputs) == 2:
        _propagate_binary(ctx, ctx.op_type, out.dtype)
    return [out]


@shape_rule("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor")
def _compare(ctx):
    out = _binary(ctx, BOOL)
    if ctx.op_type in _VALUE_OPS:
        _propagate_binary(ctx, ctx.op_type, BOOL)
    return [out]


@shape_rule("Where")
def _where(ctx):
    shape = broadcast_shapes(ctx.shape(0), ctx.shape(1), ctx.shape(2))
    dtype = ctx.dtype(1) if ctx.dtype(1) is not None else ctx.dtype(2)
    c, x, y = ctx.value(0), ctx.value(1), ctx.value(2)
    if c is not None and x is not None and y is not None and max(np.size(c), np.size(x), np.size(y)) <= MAX_VALUE_ELEMS:
        try:
            shp = np.broadcast_shapes(np.shape(c), np.shape(x), np.shape(y))
            cc = np.broadcast_to(np.asarray(c), shp).reshape(-1).tolist()
            xx = np.broadcast_to(np.asarray(x), shp).reshape(-1).tolist()
            yy = np.broadcast_to(np.asarray(y), shp).reshape(-1).tolist()
            res = np.empty(len(cc), dtype=object)
            for i, (a, b, d) in enumerate(zip(cc, xx, yy)):
                a, b, d = _py(a), _py(b), _py(d)
                if isinstance(a, int):
                    res[i] = b if a else d
                else:  # unknown condition: known only if both sides agree
                    res[i] = b if b is not None and b == d else None
            ctx.set_value(0, _tidy(res.reshape(shp), dtype))
        except ValueError:
            pass
    return [TensorType(dtype, shape)]


@shape_rule("Cast")
def _cast(ctx):
    to = ctx.attr("to")
    v = ctx.value(0)
    if v is not None and np.size(v) <= MAX_VALUE_ELEMS:
        v = np.asarray(v)
        if v.dtype == object:
            if to in (TensorProto.INT64, TensorProto.INT32):
                ctx.set_value(0, v)
        elif to is not None and to not in (TensorProto.STRING,):
            try:
                ctx.set_value(0, v.astype(_np_dtype(to, v.dtype)))
            except (TypeError, ValueError):
                pass
    return [TensorType(to, ctx.shape(0))]


@shape_rule("CastLike")
def _castlike(ctx):
    return [TensorType(ctx.dtype(1), ctx.shape(0))]


_BITS = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
    TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16, TensorProto.DOUBLE: 64, TensorProto.UINT32: 32, TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16,
    TensorProto.FLOAT8E4M3FN: 8, TensorProto.FLOAT8E4M3FNUZ: 8, TensorProto.FLOAT8E5M2: 8,
    TensorProto.FLOAT8E5M2FNUZ: 8,
}


@shape_rule("BitCast")
def _bitcast(ctx):
    to = ctx.attr("to")
    shape = ctx.shape(0)
    src, dst = _BITS.get(ctx.dtype(0)), _BITS.get(to)
    if shape is not None and src and dst and src != dst:
        if src > dst:
            shape = tuple(shape) + (src // dst,)
        else:
            if len(shape) and shape[-1] == dst // src:
                shape = tuple(shape[:-1])
            elif len(shape) and isinstance(shape[-1], int):
                raise ShapeInferenceError(f"last dim {shape[-1]} must be {dst // src} to bitcast {src}->{dst} bits")
            else:
                shape = tuple(shape[:-1]) if shape else None
    return [TensorType(to, shape)]
