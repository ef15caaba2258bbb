"""String kernels: StringConcat, StringNormalizer, StringSplit, RegexFullMatch.

String tensors are numpy object arrays of ``str``. Outputs are fresh arrays.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register


def _obj(shape, items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def _check_str(x, op: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != object and x.dtype.kind not in "US":
        raise KernelError(f"{op}: expects a string tensor, got dtype {x.dtype}")
    return x if x.dtype == object else x.astype(object)


@register("StringConcat", since=20)
def string_concat(x, y):
    x, y = _check_str(x, "StringConcat"), _check_str(y, "StringConcat")
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise KernelError(f"StringConcat: shapes {x.shape} and {y.shape} do not broadcast") from None
    xb, yb = np.broadcast_to(x, shape).reshape(-1), np.broadcast_to(y, shape).reshape(-1)
    return _obj(shape, [a + b for a, b in zip(xb, yb)])


@register("StringNormalizer", since=10)
def string_normalizer(x, *, case_change_action="NONE", is_case_sensitive=0, locale="", stopwords=None):
    x = _check_str(x, "StringNormalizer")
    if not (x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1)):
        raise KernelError(f"StringNormalizer: input must have shape [C] or [1, C], got {x.shape}")
    if case_change_action not in ("NONE", "LOWER", "UPPER"):
        raise KernelError(f"StringNormalizer: case_change_action {case_change_action!r}; use NONE, LOWER or UPPER")
    items = list(x.reshape(-1))
    if stopwords:
        if is_case_sensitive:
            stop = set(stopwords)
            items = [s for s in items if s not in stop]
        else:
            stop = {w.casefold() for w in stopwords}
            items = [s for s in items if s.casefold() not in stop]
    if case_change_action == "LOWER":
        items = [s.lower() for s in items]
    elif case_change_action == "UPPER":
        items = [s.upper() for s in items]
    if not items:
        items = [""]
    return _obj((len(items),) if x.ndim == 1 else (1, len(items)), items)


@register("StringSplit", since=20)
def string_split(x, *, delimiter=None, maxsplit=None):
    x = _check_str(x, "StringSplit")
    sep = delimiter if delimiter else None  # "" or absent: split on runs of whitespace
    n = -1 if maxsplit is None else int(maxsplit)
    # Whitespace splitting ignores leading and trailing whitespace, even when maxsplit stops early.
    parts = [(s.strip() if sep is None else s).split(sep, n) for s in x.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    flat = [p + [""] * (width - len(p)) for p in parts]
    out = np.empty((len(parts), width), dtype=object)
    for i, p in enumerate(flat):
        out[i, :] = p
    counts = np.array([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
    return out.reshape(x.shape + (width,)), counts


@lru_cache(maxsize=64)
def _compile(pattern: str):
    try:
        return re.compile(pattern)
    except re.error as e:
        raise KernelError(f"RegexFullMatch: pattern {pattern!r} does not compile: {e}") from None


@register("RegexFullMatch", since=20)
def regex_full_match(x, *, pattern=None):
    if pattern is None:
        raise KernelError("RegexFullMatch: the pattern attribute is required")
    x = _check_str(x, "RegexFullMatch")
    rx = _compile(pattern)
    return np.array([rx.fullmatch(s) is not None for s in x.reshape(-1)], dtype=bool).reshape(x.shape)
