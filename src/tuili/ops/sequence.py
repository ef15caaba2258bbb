"""Sequence and optional kernels.

A sequence is a Python list of arrays; an empty optional is ``None``. Kernels never mutate
an input list: they build a new list (holding the same, read-only arrays). SequenceAt,
Optional and OptionalGetElement return the stored array itself, not a copy; SplitToSequence
returns fresh arrays.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register


def _seq(s, op: str) -> list:
    if not isinstance(s, (list, tuple)):
        raise KernelError(f"{op}: input_sequence must be a sequence (list of tensors), got {type(s).__name__}")
    return list(s)


def _position(pos, n: int, op: str, insert: bool = False) -> int:
    p = int(np.asarray(pos).reshape(-1)[0])
    hi = n if insert else n - 1
    if not -n <= p <= hi:
        raise KernelError(f"{op}: position {p} is out of range for a sequence of length {n} (allowed [{-n}, {hi}])")
    return p + n if p < 0 else p


@register("SequenceConstruct", since=11)
def sequence_construct(*inputs):
    arrays = [np.asarray(a) for a in inputs]
    if arrays and any(a.dtype != arrays[0].dtype for a in arrays):
        raise KernelError(f"SequenceConstruct: all inputs must share one dtype, got {[str(a.dtype) for a in arrays]}")
    return arrays


@register("SequenceEmpty", since=11)
def sequence_empty(*, dtype=None):
    return []


@register("SequenceInsert", since=11)
def sequence_insert(input_sequence, tensor, position=None):
    s = _seq(input_sequence, "SequenceInsert")
    if position is None:
        s.append(tensor)
    else:
        s.insert(_position(position, len(s), "SequenceInsert", insert=True), tensor)
    return s


@register("SequenceAt", since=11)
def sequence_at(input_sequence, position):
    s = _seq(input_sequence, "SequenceAt")
    return s[_position(position, len(s), "SequenceAt")]


@register("SequenceErase", since=11)
def sequence_erase(input_sequence, position=None):
    s = _seq(input_sequence, "SequenceErase")
    if not s:
        raise KernelError("SequenceErase: cannot erase from an empty sequence")
    del s[-1 if position is None else _position(position, len(s), "SequenceErase")]
    return s


@register("SequenceLength", since=11)
def sequence_length(input_sequence):
    return np.array(len(_seq(input_sequence, "SequenceLength")), dtype=np.int64)


@register("SplitToSequence", since=11)
def split_to_sequence(input, split=None, *, axis=0, keepdims=1):  # noqa: A002 - ONNX input name
    x = np.asarray(input)
    r = x.ndim
    if not -r <= axis < r:
        raise KernelError(f"SplitToSequence: axis {axis} is out of range for input shape {x.shape}")
    axis = axis + r if axis < 0 else axis
    dim = x.shape[axis]
    if split is None:
        return [np.asarray(np.take(x, i if not keepdims else [i], axis=axis)) for i in range(dim)]
    sp = np.asarray(split)
    if sp.ndim == 0:
        chunk = int(sp)
        if chunk <= 0:
            raise KernelError(f"SplitToSequence: split must be positive, got {chunk}")
        sizes = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
    else:
        sizes = [int(v) for v in sp.reshape(-1)]
        if sum(sizes) != dim:
            raise KernelError(f"SplitToSequence: split {sizes} does not add up to axis {axis} size {dim}")
    bounds = np.cumsum([0] + sizes)
    pre = (slice(None),) * axis
    return [x[pre + (slice(int(b), int(e)),)].copy() for b, e in zip(bounds[:-1], bounds[1:])]


@register("ConcatFromSequence", since=11)
def concat_from_sequence(input_sequence, *, axis, new_axis=0):
    s = [np.asarray(a) for a in _seq(input_sequence, "ConcatFromSequence")]
    if not s:
        raise KernelError("ConcatFromSequence: the input sequence is empty")
    r = s[0].ndim + (1 if new_axis else 0)
    if not -r <= axis < r:
        raise KernelError(f"ConcatFromSequence: axis {axis} is out of range for rank {r}")
    axis = axis + r if axis < 0 else axis
    try:
        return np.stack(s, axis=axis) if new_axis else np.concatenate(s, axis=axis)
    except ValueError as e:
        raise KernelError(f"ConcatFromSequence: shapes {[a.shape for a in s]} do not fit on axis {axis}: {e}") from None


@register("Optional", since=15)
def optional(input=None, *, type=None):  # noqa: A002 - ONNX names
    return list(input) if isinstance(input, list) else input


@register("OptionalHasElement", since=15)
def optional_has_element(input=None):  # noqa: A002
    return np.array(input is not None)


@register("OptionalGetElement", since=15)
def optional_get_element(input):  # noqa: A002
    if input is None:
        raise KernelError("OptionalGetElement: the optional input is empty; check with OptionalHasElement first")
    return list(input) if isinstance(input, list) else input
