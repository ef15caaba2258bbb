"""Shape kernels: Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Shape, Size, Expand,
Identity, Constant, ConstantOfShape, EyeLike, Range, Trilu.

Aliasing contract: Reshape, Squeeze, Unsqueeze, Flatten and Identity return *views* of
their input whenever numpy can (no copy). The runtime treats every kernel output as
read-only, so a view is safe inside a graph; a caller that hands such an output to user
code that may mutate the input afterwards must copy it first. Every other kernel here
returns a fresh array (Transpose materializes a C-contiguous result because its
consumers, MatMul and Reshape above all, are faster on contiguous data; Expand returns a
writable copy, not a zero-stride broadcast view).
"""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register


def _ints(v, what: str, op: str) -> list[int]:
    """An int64 tensor / list attribute as a list of Python ints."""
    if v is None:
        raise KernelError(f"{op}: {what} is required but missing; give it as input or attribute")
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _norm_axes(axes, rank: int, op: str) -> list[int]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise KernelError(f"{op}: axis {a} is out of range for rank {rank}; use an axis in [{-rank}, {rank - 1}]")
        out.append(a + rank if a < 0 else a)
    return out


def np_dtype(onnx_dtype: int):
    """numpy dtype for an ONNX TensorProto data type id (ml_dtypes for exotic types)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    return tensor_dtype_to_np_dtype(int(onnx_dtype))


# ---------------------------------------------------------------- Reshape


def _reshape(data: np.ndarray, shape, allowzero: int) -> np.ndarray:
    shape = _ints(shape, "shape", "Reshape")
    new = []
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= data.ndim:
                raise KernelError(f"Reshape: shape[{i}] = 0 copies input dim {i}, but the input has rank {data.ndim}")
            d = data.shape[i]
        new.append(d)
    if new.count(-1) > 1:
        raise KernelError(f"Reshape: shape {shape} has more than one -1")
    if -1 in new:
        known = math.prod(d for d in new if d != -1)
        if known == 0:
            if data.size != 0:
                raise KernelError(f"Reshape: cannot infer -1 in {shape} for input shape {data.shape}")
            new[new.index(-1)] = 0
        else:
            new[new.index(-1)] = data.size // known
    if math.prod(new) != data.size:
        raise KernelError(
            f"Reshape: cannot reshape input of shape {data.shape} ({data.size} elements) to {shape} -> {new}"
        )
    return data.reshape(new)


@register("Reshape", since=1)
def reshape_v1(data, *, shape=None, consumed_inputs=None):
    return _reshape(data, shape, 0)


@register("Reshape", since=5)
def reshape(data, shape, *, allowzero=0):
    return _reshape(data, shape, allowzero)


# ---------------------------------------------------------------- Transpose


@register("Transpose", since=1)
def transpose(data, *, perm=None):
    if perm is None:
        perm = list(range(data.ndim))[::-1]
    if sorted(perm) != list(range(data.ndim)):
        raise KernelError(f"Transpose: perm {perm} is not a permutation of the {data.ndim} input axes")
    return np.transpose(data, perm).copy(order="C")


# ---------------------------------------------------------------- Squeeze / Unsqueeze


def _squeeze(data, axes):
    if axes is None:
        return data.reshape([d for d in data.shape if d != 1])
    axes = _norm_axes(_ints(axes, "axes", "Squeeze"), data.ndim, "Squeeze")
    for a in axes:
        if data.shape[a] != 1:
            raise KernelError(f"Squeeze: axis {a} of input shape {data.shape} has size {data.shape[a]}, not 1")
    return data.reshape([d for i, d in enumerate(data.shape) if i not in axes])


def _unsqueeze(data, axes):
    axes = _ints(axes, "axes", "Unsqueeze")
    rank = data.ndim + len(axes)
    axes = _norm_axes(axes, rank, "Unsqueeze")
    if len(set(axes)) != len(axes):
        raise KernelError(f"Unsqueeze: axes {axes} contain duplicates")
    shape = list(data.shape)
    for a in sorted(axes):
        shape.insert(a, 1)
    return data.reshape(shape)


@register("Squeeze", since=1)
def squeeze_v1(data, *, axes=None):
    return _squeeze(data, axes)


@register("Squeeze", since=13)
def squeeze(data, axes=None):
    return _squeeze(data, axes)


@register("Unsqueeze", since=1)
def unsqueeze_v1(data, *, axes=None):
    return _unsqueeze(data, axes)


@register("Unsqueeze", since=13)
def unsqueeze(data, axes):
    return _unsqueeze(data, axes)


# ---------------------------------------------------------------- Flatten


@register("Flatten", since=1)
def flatten(data, *, axis=1):
    r = data.ndim
    if not -r <= axis <= r:
        raise KernelError(f"Flatten: axis {axis} is out of range for rank {r}")
    if axis < 0:
        axis += r
    return data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:]))


# ---------------------------------------------------------------- Shape / Size


@register("Shape", since=1)
def shape(data, *, start=0, end=None):
    dims = np.asarray(data).shape
    r = len(dims)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = r if end is None else end
    end = min(max(end + r if end < 0 else end, 0), r)
    return np.array(dims[start:end], dtype=np.int64)


@register("Size", since=1)
def size(data):
    return np.array(np.asarray(data).size, dtype=np.int64)


# ---------------------------------------------------------------- Expand


@register("Expand", since=8)
def expand(data, shape):
    target = _ints(shape, "shape", "Expand")
    try:
        out_shape = np.broadcast_shapes(data.shape, tuple(target))
    except ValueError:
        raise KernelError(f"Expand: input shape {data.shape} cannot broadcast with shape {target}") from None
    return np.broadcast_to(data, out_shape).copy()


# ---------------------------------------------------------------- Identity


@register("Identity", since=1)
def identity(x):
    if isinstance(x, list):  # sequence: a new list holding the same (read-only) arrays
        return list(x)
    return x  # tensor or empty optional (None): no copy, outputs are read-only


# ---------------------------------------------------------------- Constant


@register("Constant", since=1)
def constant(
    *,
    value=None,
    sparse_value=None,
    value_float=None,
    value_floats=None,
    value_int=None,
    value_ints=None,
    value_string=None,
    value_strings=None,
):
    given = {
        k: v
        for k, v in dict(
            value=value,
            sparse_value=sparse_value,
            value_float=value_float,
            value_floats=value_floats,
            value_int=value_int,
            value_ints=value_ints,
            value_string=value_string,
            value_strings=value_strings,
        ).items()
        if v is not None
    }
    if len(given) != 1:
        raise KernelError(f"Constant: exactly one value attribute must be set, got {sorted(given) or 'none'}")
    (name, v), = given.items()
    if name in ("value", "sparse_value"):
        return np.asarray(v)
    if name == "value_float":
        return np.array(v, dtype=np.float32)
    if name == "value_floats":
        return np.array(v, dtype=np.float32).reshape(-1)
    if name == "value_int":
        return np.array(v, dtype=np.int64)
    if name == "value_ints":
        return np.array(v, dtype=np.int64).reshape(-1)
    if name == "value_string":
        out = np.empty((), dtype=object)
        out[()] = v
        return out
    out = np.empty(len(v), dtype=object)
    out[:] = list(v)
    return out


@register("ConstantOfShape", since=9)
def constant_of_shape(shape, *, value=None):
    dims = _ints(shape, "shape", "ConstantOfShape")
    if any(d < 0 for d in dims):
        raise KernelError(f"ConstantOfShape: negative dimension in shape {dims}")
    if value is None:
        return np.zeros(dims, dtype=np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise KernelError(f"ConstantOfShape: value attribute must hold one element, got shape {value.shape}")
    return np.full(dims, value.reshape(-1)[0], dtype=value.dtype)


# ---------------------------------------------------------------- EyeLike / Range / Trilu


@register("EyeLike", since=9)
def eye_like(x, *, dtype=None, k=0):
    if x.ndim != 2:
        raise KernelError(f"EyeLike: input must be 2-D, got shape {x.shape}")
    dt = x.dtype if dtype is None else np_dtype(dtype)
    return np.eye(x.shape[0], x.shape[1], k=k, dtype=dt)


@register("Range", since=11)
def range_(start, limit, delta):
    dt = np.asarray(start).dtype
    s, lim, d = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
    if d == 0:
        raise KernelError("Range: delta must not be zero")
    if dt.kind in "iu":
        s, lim, d = int(s), int(lim), int(d)
        n = max(-((s - lim) // d), 0)  # ceil((lim - s) / d) in exact integer arithmetic
        return (s + d * np.arange(n, dtype=np.int64)).astype(dt)
    n = max(int(math.ceil((float(lim) - float(s)) / float(d))), 0)
    return (s + np.arange(n, dtype=dt) * d).astype(dt)


@register("Trilu", since=14)
def trilu(x, k=None, *, upper=1):
    kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    if x.ndim < 2:
        raise KernelError(f"Trilu: input must have rank >= 2, got shape {x.shape}")
    return np.triu(x, kk) if upper else np.tril(x, kk)
