"""Shape-manipulating ops, with value propagation for the small int64 shape tensors of exports."""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto
from onnx.helper import np_dtype_to_tensor_dtype

from tuili.errors import ShapeInferenceError

from .elementwise import MAX_VALUE_ELEMS, _tidy
from .registry import (
    INT64,
    InferContext,
    TensorType,
    broadcast_shapes,
    dim_add,
    dim_div,
    dim_mul,
    dim_prod,
    merge_dim,
    normalize_axis,
    shape_rule,
    shape_value,
    value_to_dim,
)

INT_MAX = 2**62


def _onnx_dtype(arr: np.ndarray) -> int | None:
    if arr.dtype == object:
        if arr.size and all(isinstance(x, str) for x in arr.reshape(-1).tolist()):
            return TensorProto.STRING
        return INT64
    try:
        return np_dtype_to_tensor_dtype(arr.dtype)
    except Exception:  # noqa: BLE001
        return None


def _small(v) -> bool:
    return v is not None and np.size(v) <= MAX_VALUE_ELEMS


# --------------------------------------------------------------------------- constants
@shape_rule("Constant")
def _constant(ctx: InferContext):
    a = ctx.attrs
    if "value" in a:
        v = np.asarray(a["value"])
        dtype = _onnx_dtype(v)
    elif "sparse_value" in a:
        v = np.asarray(a["sparse_value"])
        dtype = _onnx_dtype(v)
    elif "value_float" in a:
        v, dtype = np.asarray(a["value_float"], np.float32), TensorProto.FLOAT
    elif "value_floats" in a:
        v, dtype = np.asarray(a["value_floats"], np.float32), TensorProto.FLOAT
    elif "value_int" in a:
        v, dtype = np.asarray(a["value_int"], np.int64), INT64
    elif "value_ints" in a:
        v, dtype = np.asarray(a["value_ints"], np.int64), INT64
    elif "value_string" in a:
        v, dtype = np.asarray(a["value_string"], object), TensorProto.STRING
    elif "value_strings" in a:
        v, dtype = np.asarray(a["value_strings"], object), TensorProto.STRING
    else:
        return [None]
    ctx.set_value(0, v)
    return [TensorType(dtype, tuple(int(d) for d in v.shape))]


@shape_rule("ConstantOfShape")
def _constant_of_shape(ctx):
    fill = ctx.attr("value")
    if fill is not None:
        fill = np.asarray(fill)
        dtype = _onnx_dtype(fill)
    else:
        fill, dtype = np.zeros(1, np.float32), TensorProto.FLOAT
    dims = ctx.int_list(0)
    if dims is None:
        s = ctx.shape(0)
        n = s[0] if s and len(s) == 1 else None
        return [TensorType(dtype, None if not isinstance(n, int) else (None,) * n)]
    shape = tuple(value_to_dim(d) for d in dims)
    if all(isinstance(d, int) for d in shape) and math.prod(shape) <= MAX_VALUE_ELEMS:
        ctx.set_value(0, np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype))
    return [TensorType(dtype, shape)]


@shape_rule("EyeLike")
def _eyelike(ctx):
    return [TensorType(ctx.attr("dtype", ctx.dtype(0)), ctx.shape(0))]


@shape_rule("Range")
def _range(ctx):
    dtype = ctx.dtype(0)
    vals = [ctx.value(i) for i in range(3)]
    if all(v is not None for v in vals):
        try:
            s, l, d = (np.asarray(v).reshape(-1)[0] for v in vals)
            if not any(isinstance(x, str) or x is None for x in (s, l, d)):
                n = max(int(math.ceil((float(l) - float(s)) / float(d))), 0)
                if n <= MAX_VALUE_ELEMS:
                    ctx.set_value(0, (s + np.arange(n) * d).astype(np.asarray(vals[0]).dtype))
                return [TensorType(dtype, (n,))]
            if d == 1 and s == 0 and isinstance(l, str):  # Range(0, n, 1) has n elements
                return [TensorType(dtype, (l,))]
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    return [TensorType(dtype, (None,))]


# --------------------------------------------------------------------------- shape / size
@shape_rule("Shape")
def _shape(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(INT64, (None,))]
    r = len(shape)
    start = ctx.attr("start", 0)
    end = ctx.attr("end", r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    sub = tuple(shape[start:end])
    ctx.set_value(0, shape_value(sub))
    return [TensorType(INT64, (len(sub),))]


@shape_rule("Size")
def _size(ctx):
    shape = ctx.shape(0)
    if shape is not None:
        n = dim_prod(shape)
        if n is not None:
            arr = np.asarray(n, dtype=np.int64) if isinstance(n, int) else np.asarray(n, dtype=object)
            ctx.set_value(0, arr)
    return [TensorType(INT64, ())]


# --------------------------------------------------------------------------- reshape family
@shape_rule("Reshape")
def _reshape(ctx):
    dtype = ctx.dtype(0)
    target = ctx.int_list(1)
    in_shape = ctx.shape(0)
    if target is None:
        s = ctx.shape(1)
        n = s[0] if s and len(s) == 1 else None
        return [TensorType(dtype, (None,) * n if isinstance(n, int) else None)]
    allowzero = ctx.attr("allowzero", 0)
    out = []
    neg = None
    for i, t in enumerate(target):
        t = value_to_dim(t)
        if t == 0 and not allowzero:
            if in_shape is None or i >= len(in_shape):
                if in_shape is not None:
                    raise ShapeInferenceError(f"shape {target} copies dim {i} but input has rank {len(in_shape)}")
                out.append(None)
            else:
                out.append(in_shape[i])
        elif t == -1:
            if neg is not None:
                raise ShapeInferenceError(f"shape {target} has more than one -1")
            neg = i
            out.append(None)
        elif isinstance(t, int) and t < -1:
            raise ShapeInferenceError(f"shape {target} has invalid entry {t}")
        else:
            out.append(t)
    if in_shape is not None:
        total = dim_prod(in_shape)
        if neg is not None:
            known = dim_prod(d for j, d in enumerate(out) if j != neg)
            if total is not None and known is not None:
                q = dim_div(total, known)
                if q is None and isinstance(total, int) and isinstance(known, int) and known != 0:
                    raise ShapeInferenceError(f"cannot reshape {list(in_shape)} to {target}")
                out[neg] = q
        else:
            known = dim_prod(out)
            if isinstance(total, int) and isinstance(known, int) and total != known:
                raise ShapeInferenceError(f"cannot reshape {list(in_shape)} ({total} elements) to {target} ({known})")
    v = ctx.value(0)
    if _small(v) and all(isinstance(d, int) for d in out):
        ctx.set_value(0, np.asarray(v).reshape(out))
    return [TensorType(dtype, tuple(out))]


@shape_rule("Flatten")
def _flatten(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(ctx.dtype(0), (None, None))]
    axis = ctx.attr("axis", 1)
    r = len(shape)
    if axis < 0:
        axis += r
    if not 0 <= axis <= r:
        raise ShapeInferenceError(f"axis {ctx.attr('axis', 1)} out of range for rank {r}")
    return [TensorType(ctx.dtype(0), (dim_prod(shape[:axis]), dim_prod(shape[axis:])))]


def _axes(ctx, attr_name="axes", input_index=1):
    """axes from the attribute (older opsets) or the input; None if unknown, [] if absent."""
    if attr_name in ctx.attrs:
        return list(ctx.attrs[attr_name])
    if ctx.has_input(input_index):
        return ctx.int_list_concrete(input_index)
    return []


@shape_rule("Squeeze")
def _squeeze(ctx):
    shape = ctx.shape(0)
    axes = _axes(ctx)
    dtype = ctx.dtype(0)
    if axes is None or shape is None:
        # axes given but unknown: the rank still drops by the number of axes
        ax_shape = ctx.shape(1)
        n = None if ax_shape is None else 1 if len(ax_shape) == 0 else ax_shape[0]
        if shape is not None and isinstance(n, int):
            return [TensorType(dtype, (None,) * (len(shape) - n))]
        return [TensorType(dtype, None)]
    r = len(shape)
    if not axes:
        if any(not isinstance(d, int) for d in shape):
            return [TensorType(dtype, None)]
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = {normalize_axis(a, r) for a in axes}
    for a in axes:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise ShapeInferenceError(f"cannot squeeze axis {a} of size {shape[a]} (shape {list(shape)})")
    out = tuple(d for i, d in enumerate(shape) if i not in axes)
    v = ctx.value(0)
    if v is not None:
        ctx.set_value(0, np.asarray(v).reshape([d for i, d in enumerate(np.shape(v)) if i not in axes]))
    return [TensorType(dtype, out)]


@shape_rule("Unsqueeze")
def _unsqueeze(ctx):
    shape = ctx.shape(0)
    axes = _axes(ctx)
    dtype = ctx.dtype(0)
    if axes is None or shape is None:
        return [TensorType(dtype, None)]
    r = len(shape) + len(axes)
    axes = sorted(normalize_axis(a, r) for a in axes)
    if len(set(axes)) != len(axes):
        raise ShapeInferenceError(f"repeated axes {axes}")
    it = iter(shape)
    out = tuple(1 if i in axes else next(it) for i in range(r))
    v = ctx.value(0)
    if v is not None:
        ctx.set_value(0, np.asarray(v).reshape([1 if i in axes else d for i, d in
                                                 zip(range(r), _fill(np.shape(v), axes, r))]))
    return [TensorType(dtype, out)]


def _fill(shape, axes, r):
    it = iter(shape)
    return [1 if i in axes else next(it) for i in range(r)]


@shape_rule("Expand")
def _expand(ctx):
    target = ctx.int_list(1)
    shape = ctx.shape(0)
    if target is None:
        s = ctx.shape(1)
        n = s[0] if s and len(s) == 1 else None
        if shape is not None and isinstance(n, int):
            # an unknown target entry is 1 or equal to the input dim where that is > 1
            return [TensorType(ctx.dtype(0), broadcast_shapes(shape, (None,) * n))]
        return [TensorType(ctx.dtype(0), None)]
    target = tuple(value_to_dim(d) for d in target)
    out = broadcast_shapes(shape, target)
    v = ctx.value(0)
    if _small(v) and out is not None and all(isinstance(d, int) for d in out) and math.prod(out) <= MAX_VALUE_ELEMS:
        ctx.set_value(0, np.broadcast_to(np.asarray(v), out).copy())
    return [TensorType(ctx.dtype(0), out)]


@shape_rule("Tile")
def _tile(ctx):
    shape = ctx.shape(0)
    reps = ctx.int_list(1)
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    if reps is None:
        return [TensorType(ctx.dtype(0), (None,) * len(shape))]
    if len(reps) != len(shape):
        raise ShapeInferenceError(f"repeats {reps} must have one entry per dim of {list(shape)}")
    return [TensorType(ctx.dtype(0), tuple(dim_mul(d, value_to_dim(r)) for d, r in zip(shape, reps)))]


@shape_rule("Transpose")
def _transpose(ctx):
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    perm = ctx.attr("perm") or list(range(len(shape)))[::-1]
    if sorted(perm) != list(range(len(shape))):
        raise ShapeInferenceError(f"perm {perm} is not a permutation of rank {len(shape)}")
    v = ctx.value(0)
    if v is not None:
        ctx.set_value(0, np.transpose(np.asarray(v), perm))
    return [TensorType(ctx.dtype(0), tuple(shape[p] for p in perm))]


# --------------------------------------------------------------------------- concat / split / slice
@shape_rule("Concat")
def _concat(ctx):
    shapes = [ctx.shape(i) for i in range(len(ctx.inputs))]
    dtype = next((ctx.dtype(i) for i in range(len(ctx.inputs)) if ctx.dtype(i) is not None), None)
    axis = ctx.attr("axis", 0)
    known = [s for s in shapes if s is not None]
    if not known:
        return [TensorType(dtype, None)]
    r = len(known[0])
    for s in known:
        if len(s) != r:
            raise ShapeInferenceError(f"inputs have different ranks: {[list(x) for x in known]}")
    axis = normalize_axis(axis, r)
    out = []
    for i in range(r):
        if i == axis:
            tot = 0
            for s in shapes:
                tot = None if s is None else dim_add(tot, s[i]) if tot is not None else None
            out.append(tot)
        else:
            d = None
            for s in known:
                try:
                    d = merge_dim(d, s[i])
                except ShapeInferenceError:
                    raise ShapeInferenceError(
                        f"dim {i} differs between inputs: {[list(x) for x in known]}") from None
            out.append(d)
    vals = [ctx.value(i) for i in range(len(ctx.inputs))]
    if r == 1 and dtype == INT64 and any(v is not None for v in vals):
        # shape tensors: an input of known length but unknown value contributes unknown entries
        for i, v in enumerate(vals):
            if v is None and shapes[i] is not None and isinstance(shapes[i][0], int) and shapes[i][0] <= MAX_VALUE_ELEMS:
                vals[i] = np.full(shapes[i][0], None, dtype=object)
    if all(v is not None for v in vals) and sum(np.size(v) for v in vals) <= MAX_VALUE_ELEMS:
        arrs = [np.asarray(v) for v in vals]
        if any(a.dtype == object for a in arrs):
            arrs = [a.astype(object) for a in arrs]
            res = np.concatenate(arrs, axis=axis)
            for idx in np.ndindex(res.shape):
                x = res[idx]
                res[idx] = int(x) if isinstance(x, (np.integer, int)) else x
            ctx.set_value(0, _tidy(res, dtype or INT64))
        else:
            ctx.set_value(0, np.concatenate(arrs, axis=axis))
    return [TensorType(dtype, tuple(out))]


@shape_rule("Split")
def _split(ctx):
    shape = ctx.shape(0)
    dtype = ctx.dtype(0)
    n = ctx.num_outputs
    if shape is None:
        return [TensorType(dtype, None) for _ in range(n)]
    axis = normalize_axis(ctx.attr("axis", 0), len(shape))
    d = shape[axis]
    if "split" in ctx.attrs:
        sizes = list(ctx.attrs["split"])
    elif ctx.has_input(1):
        sizes = ctx.int_list_concrete(1)
        if sizes is None:
            return [TensorType(dtype, shape[:axis] + (None,) + shape[axis + 1:]) for _ in range(n)]
    else:
        num = ctx.attr("num_outputs", n)
        if isinstance(d, int):
            if "num_outputs" in ctx.attrs:
                chunk = -(-d // num)
                sizes = [chunk] * (num - 1) + [d - chunk * (num - 1)]
                if sizes[-1] < 0:
                    raise ShapeInferenceError(f"dim {d} of axis {axis} cannot be split into {num} outputs")
            else:
                if d % num:
                    raise ShapeInferenceError(f"dim {d} of axis {axis} does not split evenly into {num}")
                sizes = [d // num] * num
        else:
            q = dim_div(d, num) if d is not None else None
            sizes = [q] * num
    if len(sizes) != n:
        raise ShapeInferenceError(f"split {sizes} has {len(sizes)} entries for {n} outputs")
    if isinstance(d, int) and all(isinstance(s, int) for s in sizes) and sum(sizes) != d:
        raise ShapeInferenceError(f"split {sizes} does not sum to dim {d} of axis {axis}")
    return [TensorType(dtype, shape[:axis] + (s,) + shape[axis + 1:]) for s in sizes]


def slice_range(d: int, start: int, end: int, step: int) -> range:
    """The indices ONNX Slice takes along an axis of length d (its clamping differs from
    Python's for negative steps: start is clamped to [0, d-1] and end to [-1, d-1])."""
    if step == 0:
        raise ShapeInferenceError("slice step cannot be 0")
    start = start + d if start < 0 else start
    end = end + d if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), d), min(max(end, 0), d)
    else:
        start, end = min(max(start, 0), d - 1), min(max(end, -1), d - 1)
    return range(start, end, step)


def _slice_dim(d, start, end, step):
    if isinstance(d, int):
        return len(slice_range(d, start, end, step))
    # symbolic/unknown length: only x[0:] keeps the symbol; x[k:] is max(d - k, 0) and a bounded
    # end is min(end, d), which a polynomial cannot state for every d
    if step == 1 and start == 0 and end >= INT_MAX // 4:
        return d
    return None


@shape_rule("Slice")
def _slice(ctx):
    shape = ctx.shape(0)
    dtype = ctx.dtype(0)
    if shape is None:
        return [TensorType(dtype, None)]
    r = len(shape)
    if "starts" in ctx.attrs:  # opset < 10
        starts, ends = ctx.attrs["starts"], ctx.attrs["ends"]
        axes = ctx.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ctx.int_list_concrete(1), ctx.int_list_concrete(2)
        axes = ctx.int_list_concrete(3) if ctx.has_input(3) else None
        steps = ctx.int_list_concrete(4) if ctx.has_input(4) else None
        if axes is None and ctx.has_input(3):
            return [TensorType(dtype, (None,) * r)]
        if starts is None or ends is None or (steps is None and ctx.has_input(4)):
            if axes is not None:
                ax = {normalize_axis(a, r) for a in axes}
                return [TensorType(dtype, tuple(None if i in ax else d for i, d in enumerate(shape)))]
            return [TensorType(dtype, (None,) * r)]
        if axes is None:
            axes = list(range(len(starts)))
        if steps is None:
            steps = [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        raise ShapeInferenceError(f"starts/ends/axes/steps lengths differ: {starts} {ends} {axes} {steps}")
    out = list(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = normalize_axis(a, r)
        out[a] = _slice_dim(shape[a], s, e, st)
    v = ctx.value(0)
    if v is not None and np.ndim(v) == r:
        v = np.asarray(v)
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = normalize_axis(a, r)
            v = np.take(v, list(slice_range(v.shape[a], s, e, st)), axis=a)
        ctx.set_value(0, v)
    return [TensorType(dtype, tuple(out))]


# --------------------------------------------------------------------------- gather / scatter
@shape_rule("Gather")
def _gather(ctx):
    data, idx = ctx.shape(0), ctx.shape(1)
    dtype = ctx.dtype(0)
    if data is None or idx is None:
        return [TensorType(dtype, None)]
    axis = normalize_axis(ctx.attr("axis", 0), len(data))
    out = tuple(data[:axis]) + tuple(idx) + tuple(data[axis + 1:])
    v, iv = ctx.value(0), ctx.value(1)
    if v is not None and iv is not None and np.size(iv) <= MAX_VALUE_ELEMS:
        v, iv = np.asarray(v), np.asarray(iv).astype(np.int64)
        n = v.shape[axis]
        if np.all((iv >= -n) & (iv < n)):
            ctx.set_value(0, np.take(v, np.where(iv < 0, iv + n, iv), axis=axis))
    return [TensorType(dtype, out)]


@shape_rule("GatherElements")
def _gather_elements(ctx):
    return [TensorType(ctx.dtype(0), ctx.shape(1))]


@shape_rule("GatherND")
def _gather_nd(ctx):
    data, idx = ctx.shape(0), ctx.shape(1)
    b = ctx.attr("batch_dims", 0)
    if data is None or idx is None or not idx or not isinstance(idx[-1], int):
        return [TensorType(ctx.dtype(0), None)]
    return [TensorType(ctx.dtype(0), tuple(idx[:-1]) + tuple(data[b + idx[-1]:]))]


@shape_rule("Compress")
def _compress(ctx):
    shape = ctx.shape(0)
    axis = ctx.attr("axis")
    cond = ctx.value(1)
    n = int(np.count_nonzero(cond)) if cond is not None else ctx.fresh_dim()
    if axis is None or shape is None:
        return [TensorType(ctx.dtype(0), (n,))]
    axis = normalize_axis(axis, len(shape))
    return [TensorType(ctx.dtype(0), shape[:axis] + (n,) + shape[axis + 1:])]


@shape_rule("NonZero")
def _nonzero(ctx):
    r = ctx.rank(0)
    return [TensorType(INT64, (r, ctx.fresh_dim()))]


@shape_rule("Unique")
def _unique(ctx):
    shape = ctx.shape(0)
    axis = ctx.attr("axis")
    u = ctx.fresh_dim()
    if axis is None:
        y = (u,)
        inv = (dim_prod(shape),) if shape is not None else (None,)
    elif shape is None:
        y, inv = None, (None,)
    else:
        axis = normalize_axis(axis, len(shape))
        y = shape[:axis] + (u,) + shape[axis + 1:]
        inv = (shape[axis],)
    outs = [TensorType(ctx.dtype(0), y), TensorType(INT64, (u,)), TensorType(INT64, inv), TensorType(INT64, (u,))]
    return outs[: ctx.num_outputs]


@shape_rule("OneHot")
def _onehot(ctx):
    shape = ctx.shape(0)
    dtype = ctx.dtype(2)
    if shape is None:
        return [TensorType(dtype, None)]
    depth = ctx.value(1)
    dep = None
    if depth is not None:
        x = np.asarray(depth).reshape(-1)[0]
        dep = int(x) if not isinstance(x, str) else x
    r = len(shape) + 1
    axis = normalize_axis(ctx.attr("axis", -1), r)
    out = list(shape)
    out.insert(axis, dep)
    return [TensorType(dtype, tuple(out))]


# --------------------------------------------------------------------------- pad / resize / space
@shape_rule("Pad")
def _pad(ctx):
    shape = ctx.shape(0)
    dtype = ctx.dtype(0)
    if shape is None:
        return [TensorType(dtype, None)]
    r = len(shape)
    if "pads" in ctx.attrs:
        pads = list(ctx.attrs["pads"])
    else:
        pads = ctx.int_list_concrete(1)
    if pads is None:
        return [TensorType(dtype, (None,) * r)]
    axes = list(range(r))
    if ctx.has_input(3):
        axes = ctx.int_list_concrete(3)
        if axes is None:
            return [TensorType(dtype, (None,) * r)]
        axes = [normalize_axis(a, r) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ShapeInferenceError(f"pads {pads} must have 2 entries per padded axis ({len(axes)} axes)")
    out = list(shape)
    k = len(axes)
    for j, a in enumerate(axes):
        out[a] = dim_add(dim_add(shape[a], pads[j]), pads[j + k])
    return [TensorType(dtype, tuple(out))]


def _resize_shape(shape, scales=None, sizes=None, axes=None, policy="stretch"):
    r = len(shape)
    axes = list(range(r)) if axes is None else [normalize_axis(a, r) for a in axes]
    out = list(shape)
    if sizes is not None:
        if len(sizes) != len(axes):
            raise ShapeInferenceError(f"sizes {sizes} must have one entry per axis {axes}")
        if policy in ("not_larger", "not_smaller"):
            if all(isinstance(shape[a], int) for a in axes) and all(isinstance(x, int) for x in sizes):
                ratios = [x / shape[a] for x, a in zip(sizes, axes)]
                scale = min(ratios) if policy == "not_larger" else max(ratios)
                for a in axes:
                    out[a] = int(math.floor(shape[a] * scale + 0.5))
            else:  # the common scale depends on the input sizes
                for a in axes:
                    out[a] = None
        else:
            for a, s in zip(axes, sizes):
                out[a] = value_to_dim(s)
    elif scales is not None:
        if len(scales) != len(axes):
            raise ShapeInferenceError(f"scales {scales} must have one entry per axis {axes}")
        for a, s in zip(axes, scales):
            d = shape[a]
            if isinstance(d, int):
                out[a] = int(math.floor(d * s + 1e-6))
            elif s == 1:
                out[a] = d
            elif float(s).is_integer():
                out[a] = dim_mul(d, int(s))
            else:
                out[a] = None
    else:
        out = [None] * r
    return tuple(out)


@shape_rule("Resize")
def _resize(ctx):
    shape = ctx.shape(0)
    dtype = ctx.dtype(0)
    if shape is None:
        return [TensorType(dtype, None)]
    axes = ctx.attr("axes")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if ctx.opset < 11:
        scales = ctx.value(1)
        scales = None if scales is None else [float(x) for x in np.asarray(scales).reshape(-1)]
        return [TensorType(dtype, _resize_shape(shape, scales=scales))]
    sizes = ctx.int_list(3) if ctx.has_input(3) else None
    if sizes is not None and len(sizes) == 0:
        sizes = None
    scales = None
    if sizes is None and ctx.has_input(2):
        sv = ctx.value(2)
        if sv is not None and np.size(sv) > 0:
            scales = [float(x) for x in np.asarray(sv).reshape(-1)]
    if sizes is None and scales is None:
        if axes is not None:
            ax = {normalize_axis(a, len(shape)) for a in axes}
            return [TensorType(dtype, tuple(None if i in ax else d for i, d in enumerate(shape)))]
        return [TensorType(dtype, (None,) * len(shape))]
    return [TensorType(dtype, _resize_shape(shape, scales, sizes, axes, policy))]


@shape_rule("Upsample")
def _upsample(ctx):
    shape = ctx.shape(0)
    scales = ctx.attr("scales")
    if scales is None and ctx.has_input(1) and ctx.value(1) is not None:
        scales = [float(x) for x in np.asarray(ctx.value(1)).reshape(-1)]
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    if scales is None:
        return [TensorType(ctx.dtype(0), (None,) * len(shape))]
    return [TensorType(ctx.dtype(0), _resize_shape(shape, scales=scales))]


@shape_rule("DepthToSpace", "SpaceToDepth")
def _d2s(ctx):
    shape = ctx.shape(0)
    b = ctx.attr("blocksize")
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    if len(shape) != 4:
        raise ShapeInferenceError(f"input must be 4-D, got {list(shape)}")
    n, c, h, w = shape
    if ctx.op_type == "DepthToSpace":
        if isinstance(c, int) and c % (b * b):
            raise ShapeInferenceError(f"channels {c} not divisible by blocksize^2 {b * b}")
        out = (n, dim_div(c, b * b), dim_mul(h, b), dim_mul(w, b))
    else:
        out = (n, dim_mul(c, b * b), dim_div(h, b), dim_div(w, b))
    return [TensorType(ctx.dtype(0), out)]


@shape_rule("CenterCropPad")
def _center_crop_pad(ctx):
    shape = ctx.shape(0)
    sizes = ctx.int_list(1)
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    r = len(shape)
    axes = [normalize_axis(a, r) for a in ctx.attr("axes", list(range(r)))]
    if sizes is None:
        return [TensorType(ctx.dtype(0), tuple(None if i in axes else d for i, d in enumerate(shape)))]
    out = list(shape)
    for a, s in zip(axes, sizes):
        out[a] = value_to_dim(s)
    return [TensorType(ctx.dtype(0), tuple(out))]


@shape_rule("Col2Im")
def _col2im(ctx):
    shape = ctx.shape(0)
    image = ctx.int_list(1)
    block = ctx.int_list(2)
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    if image is None:
        k = None
        for j in (1, 2):
            sj = ctx.shape(j)
            if sj is not None and len(sj) == 1 and isinstance(sj[0], int):
                k = sj[0]
        for name, per in (("dilations", 1), ("strides", 1), ("pads", 2)):
            if k is None and ctx.attr(name):
                k = len(ctx.attr(name)) // per
        if k is None:
            return [TensorType(ctx.dtype(0), None)]
        image = [None] * k
    c = dim_div(shape[1], dim_prod(block)) if block is not None else None
    return [TensorType(ctx.dtype(0), (shape[0], c) + tuple(value_to_dim(x) for x in image))]


@shape_rule("Det")
def _det(ctx):
    shape = ctx.shape(0)
    return [TensorType(ctx.dtype(0), None if shape is None else tuple(shape[:-2]))]


@shape_rule("Einsum")
def _einsum(ctx):
    eq = ctx.attr("equation", "").replace(" ", "")
    dtype = ctx.dtype(0)
    shapes = [ctx.shape(i) for i in range(len(ctx.inputs))]
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if any(s is None for s in shapes) or len(terms) != len(shapes):
        return [TensorType(dtype, None)]
    letters: dict[str, object] = {}
    ell = None
    for term, shape in zip(terms, shapes):
        n_ell = len(shape) - len(term.replace("...", ""))
        pos = 0
        k = 0
        while k < len(term):
            if term.startswith("...", k):
                dims = tuple(shape[pos:pos + n_ell])
                ell = dims if ell is None else broadcast_shapes(ell, dims)
                pos += n_ell
                k += 3
                continue
            ch = term[k]
            d = shape[pos]
            if ch in letters:
                prev = letters[ch]
                if isinstance(prev, int) and prev == 1:
                    letters[ch] = d
                elif not (isinstance(d, int) and d == 1):
                    letters[ch] = merge_dim(prev, d)
            else:
                letters[ch] = d
            pos += 1
            k += 1
    if not arrow:
        # implicit output: ellipsis then letters appearing once, alphabetical
        counts = {}
        for ch in lhs.replace(",", "").replace(".", ""):
            counts[ch] = counts.get(ch, 0) + 1
        rhs = ("..." if ell is not None else "") + "".join(sorted(c for c, n in counts.items() if n == 1))
    out = []
    k = 0
    while k < len(rhs):
        if rhs.startswith("...", k):
            out.extend(ell or ())
            k += 3
            continue
        out.append(letters.get(rhs[k]))
        k += 1
    return [TensorType(dtype, tuple(out))]


@shape_rule("MaxUnpool")
def _max_unpool(ctx):
    shape = ctx.shape(0)
    if ctx.has_input(2):
        out = ctx.int_list(2)
        return [TensorType(ctx.dtype(0), None if out is None else tuple(value_to_dim(x) for x in out))]
    if shape is None:
        return [TensorType(ctx.dtype(0), None)]
    k = ctx.attr("kernel_shape")
    nsp = len(k)
    strides = ctx.attr("strides", [1] * nsp)
    pads = ctx.attr("pads", [0] * 2 * nsp)
    sp = []
    for i in range(nsp):
        d = shape[2 + i]
        sp.append((d - 1) * strides[i] + k[i] - pads[i] - pads[i + nsp] if isinstance(d, int) else None)
    return [TensorType(ctx.dtype(0), tuple(shape[:2]) + tuple(sp))]


