"""Random generators: RandomNormal, RandomUniform, RandomNormalLike, RandomUniformLike,
Multinomial, Bernoulli.

Each call draws from a numpy ``Generator``: seeded with the node's ``seed`` attribute when
given (so a seeded node returns the same tensor on every call, like onnxruntime does for a
fresh session), otherwise freshly seeded from OS entropy. The values can never equal those
of another implementation's RNG; only shapes, dtypes and distributions are portable.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register
from tuili.ops.shape import np_dtype


def _rng(seed) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    # The attribute is a float; use its exact bit pattern so 1.0 and 1.5 differ.
    return np.random.default_rng(int(np.float64(seed).view(np.uint64)))


def _float_dtype(dtype, op: str, like=None):
    dt = np.dtype(np_dtype(dtype)) if dtype is not None else (like.dtype if like is not None else np.dtype(np.float32))
    if dt.kind != "f" and "float" not in dt.name:
        raise KernelError(f"{op}: output dtype must be a floating type, got {dt}")
    return dt


@register("RandomNormal", since=1)
def random_normal(*, shape, dtype=1, mean=0.0, scale=1.0, seed=None):
    dt = _float_dtype(dtype, "RandomNormal")
    return (_rng(seed).standard_normal(tuple(shape)) * scale + mean).astype(dt)


@register("RandomUniform", since=1)
def random_uniform(*, shape, dtype=1, high=1.0, low=0.0, seed=None):
    dt = _float_dtype(dtype, "RandomUniform")
    return _rng(seed).uniform(low, high, tuple(shape)).astype(dt)


@register("RandomNormalLike", since=1)
def random_normal_like(x, *, dtype=None, mean=0.0, scale=1.0, seed=None):
    dt = _float_dtype(dtype, "RandomNormalLike", like=x)
    return (_rng(seed).standard_normal(x.shape) * scale + mean).astype(dt)


@register("RandomUniformLike", since=1)
def random_uniform_like(x, *, dtype=None, high=1.0, low=0.0, seed=None):
    dt = _float_dtype(dtype, "RandomUniformLike", like=x)
    return _rng(seed).uniform(low, high, x.shape).astype(dt)


@register("Multinomial", since=7)
def multinomial(x, *, dtype=6, sample_size=1, seed=None):
    """x: [batch, classes] unnormalized log-probabilities -> [batch, sample_size] class ids."""
    if x.ndim != 2:
        raise KernelError(f"Multinomial: input must be [batch, classes], got shape {x.shape}")
    dt = np.dtype(np_dtype(dtype))
    if dt not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise KernelError(f"Multinomial: dtype must be int32 or int64, got {dt}")
    logits = x.astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    u = _rng(seed).random((x.shape[0], sample_size))
    idx = np.stack([np.searchsorted(cdf[b], u[b], side="right") for b in range(x.shape[0])]) if x.shape[0] else u
    return np.minimum(idx, x.shape[1] - 1).astype(dt).reshape(x.shape[0], sample_size)


@register("Bernoulli", since=15)
def bernoulli(x, *, dtype=None, seed=None):
    dt = x.dtype if dtype is None else np.dtype(np_dtype(dtype))
    return (_rng(seed).random(x.shape) < x).astype(dt)
