"""Matrix products: MatMul, Gemm, MatMulInteger, Einsum, Det.

MatMul and Gemm carry most of the FLOPs of BERT and of CNN classifier heads, so they go
straight to BLAS (np.matmul / np.dot) with no dtype changes and no extra copies: transposes
are views, alpha / beta / C are applied in place on the product we own.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.elementwise import is_exotic
from tuili.ops.registry import register

_asarray = np.asarray


@register("MatMul", since=1)
def matmul(a, b):
    a = _asarray(a)
    b = _asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise KernelError(f"MatMul: inputs must be at least 1-D, got shapes {a.shape} and {b.shape}")
    dt = a.dtype
    if is_exotic(dt):
        return _asarray(np.matmul(a.astype(np.float32), b.astype(np.float32))).astype(dt)
    if a.ndim == 2 and b.ndim == 2:
        return np.dot(a, b)
    if a.ndim > 2 and b.ndim == 2 and a.flags.c_contiguous:
        # (..., K) @ (K, N): one big GEMM instead of a batch of small ones
        lead = a.shape[:-1]
        return np.dot(a.reshape(-1, a.shape[-1]), b).reshape(*lead, b.shape[-1])
    y = np.matmul(a, b)
    return _asarray(y)


def _gemm(a, b, c, alpha, beta, trans_a, trans_b):
    a = _asarray(a)
    b = _asarray(b)
    dt = a.dtype
    if is_exotic(dt):
        a = a.astype(np.float32)
        b = b.astype(np.float32)
        c = None if c is None else _asarray(c).astype(np.float32)
    if a.ndim != 2 or b.ndim != 2:
        raise KernelError(f"Gemm: A and B must be 2-D, got shapes {a.shape} and {b.shape}")
    if trans_a:
        a = a.T
    if trans_b:
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise KernelError(
            f"Gemm: inner dimensions differ: op(A) is {a.shape}, op(B) is {b.shape} "
            f"(transA={trans_a}, transB={trans_b})"
        )
    y = np.dot(a, b)
    if y.dtype.kind != "f":
        # integer Gemm: scale in float64, then back to the input dtype
        if alpha != 1.0 or (c is not None and beta not in (0.0, 1.0)):
            acc = y.astype(np.float64) * alpha
            if c is not None and beta != 0.0:
                acc += _asarray(c).astype(np.float64) * beta
            return np.rint(acc).astype(dt) if dt.kind in "iu" else acc.astype(dt)
        if c is not None and beta != 0.0:
            y += _asarray(c).astype(y.dtype, copy=False)
        return y if y.dtype == dt else y.astype(dt)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if c is not None and beta != 0.0:
        c = _asarray(c)
        if c.dtype != y.dtype:
            c = c.astype(y.dtype)
        if beta == 1.0:
            y += c
        else:
            y += c * y.dtype.type(beta)
    if y.dtype != dt:
        y = y.astype(dt)
    return y


@register("Gemm", since=1)
def gemm_legacy(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=0):  # noqa: N803
    return _gemm(a, b, c, alpha, beta, transA, transB)


@register("Gemm", since=7)
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803
    return _gemm(a, b, c, alpha, beta, transA, transB)


def _zero_point(zp) -> np.ndarray | None:
    if zp is None:
        return None
    zp = _asarray(zp)
    if zp.size == 0:
        return None
    return zp.astype(np.float64)


@register("MatMulInteger", since=10)
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    """int8/uint8 product accumulated exactly: float64 holds every int32 partial sum exactly
    (|sum| < 2^53), and BLAS dgemm is far faster than numpy's integer matmul loops."""
    a = _asarray(a)
    b = _asarray(b)
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    azp = _zero_point(a_zero_point)
    bzp = _zero_point(b_zero_point)
    if azp is not None:
        if azp.ndim == 1 and azp.size > 1 and a.ndim >= 2:
            azp = azp.reshape(-1, 1)  # per-row of A
        af -= azp
    if bzp is not None:
        bf -= bzp  # scalar or per-column (N,) broadcasts along the last axis
    y = np.matmul(af, bf)
    return np.rint(y).astype(np.int32)


@register("Einsum", since=12)
def einsum(*inputs, equation):
    eq = equation.replace(" ", "")
    arrs = [_asarray(x) for x in inputs]
    dt = arrs[0].dtype
    if is_exotic(dt):
        arrs = [x.astype(np.float32) for x in arrs]
    try:
        # the path optimizer (and its BLAS contractions) pays off for 3+ operands or big ones;
        # for tiny inputs its planning overhead dominates
        big = len(arrs) > 2 or sum(x.size for x in arrs) > 4096
        y = np.einsum(eq, *arrs, optimize=big)
    except ValueError as e:
        shapes = ", ".join(str(x.shape) for x in arrs)
        raise KernelError(f"Einsum: equation {equation!r} does not fit input shapes {shapes}: {e}") from None
    return _asarray(y).astype(dt, copy=False)


@register("Det", since=11)
def det(x):
    x = _asarray(x)
    dt = x.dtype
    xf = x.astype(np.float32) if (is_exotic(dt) or dt == np.float16) else x
    if xf.ndim < 2 or xf.shape[-1] != xf.shape[-2]:
        raise KernelError(f"Det: input must be [..., M, M], got shape {x.shape}")
    return _asarray(np.linalg.det(xf)).astype(dt, copy=False)
