"""Matrix products: MatMul, Gemm, MatMulInteger, Einsum, Det; onnxruntime's MatMulNBits (int4 weights).

MatMul and Gemm carry most of the FLOPs of BERT and of CNN classifier heads, so they go
straight to BLAS (np.matmul / np.dot) with no dtype changes and no extra copies: transposes
are views, alpha / beta / C are applied in place on the product we own.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.elementwise import is_exotic
from tuili.ops.registry import MS_DOMAIN, NodeInfo, absorbing, prepares, register, unplanned

_asarray = np.asarray
_F32 = np.dtype(np.float32)
#: m*k*n below which a product stays on numpy: torch's per-call overhead (~5 us) would dominate
_TORCH_MIN_MACS = 1 << 15


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


def const_f32(info: NodeInfo, i: int, ndim: int | tuple[int, ...]) -> np.ndarray | None:
    """Input ``i`` of a node if it is a constant float32 array of rank ``ndim``, else None."""
    v = info.consts[i] if len(info.consts) > i else None
    ok = isinstance(v, np.ndarray) and v.dtype == _F32 and v.ndim in (ndim if isinstance(ndim, tuple) else (ndim,))
    return v if ok else None


def pack_weight(w: np.ndarray, bias: np.ndarray | None, activation: str = "", bf16: bool = False):
    """``w`` packed for oneDNN's inner product (``ops._torch.packed_linear``) where that pays: always in
    bf16 (the precision asked for), in float32 for weights big enough that a call's overhead does not
    dominate even at one row; else None."""
    from tuili.ops._torch import packed_linear

    if not bf16 and w.size * 8 < _TORCH_MIN_MACS:
        return None
    return packed_linear(w, bias, activation, bf16=bf16)


def fits(a: np.ndarray, k: int, min_ndim: int = 2) -> bool:
    """True if ``a`` is a float32 left operand of rank >= ``min_ndim`` with ``k`` columns."""
    return a.dtype == _F32 and a.ndim >= min_ndim and a.shape[-1] == k


@prepares(matmul)
def prepare_matmul(info: NodeInfo, bf16: bool = False):
    """Plan time: MatMul(A, W) with a constant 2-D W (BERT's projections, a classifier head) packed
    for oneDNN's inner product (bf16 operands with ``bf16``); a float32 MatMul of two run-time
    operands (attention) on torch's BLAS when it is big enough. Either way a run whose convolutions
    are oneDNN's uses one thread pool (torch's), not OpenBLAS's beside it. None keeps numpy."""
    from tuili.ops._torch import matmul_on_torch, torch_or_none

    if not info.float32_or_unknown(0) or (info.shapes[0] is not None and len(info.shapes[0]) < 2):
        return None
    w = const_f32(info, 1, 2)
    if w is not None:
        packed = pack_weight(w, None, bf16=bf16)
        if packed is None:
            return None

        @absorbing(1)
        def matmul_onednn(a, b):
            return packed(a) if fits(a, packed.k, min_ndim=1) else unplanned(matmul, "MatMul", a, b)

        return matmul_onednn
    if bf16 or not info.float32_or_unknown(1) or torch_or_none() is None:
        return None

    def matmul_torch(a, b):
        if (a.dtype == _F32 and b.dtype == _F32 and a.ndim >= 2 and b.ndim >= 2
                and a.size * b.shape[-1] >= _TORCH_MIN_MACS):
            return matmul_on_torch(a, b)
        return matmul(a, b)

    return matmul_torch


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


@prepares(gemm)
def prepare_gemm(info: NodeInfo, bf16: bool = False):
    """Plan time: Gemm ``A·B + C`` with constant B packed for oneDNN's inner product (bf16 operands
    with ``bf16``), for transA=0, alpha=1 and C absent or a constant (N,)/(1, N) row with beta=1
    (what the optimizer's gemm-weights pass leaves for a Linear layer); else None (numpy)."""
    a = info.attrs
    b = const_f32(info, 1, 2)
    if info.opset < 7 or b is None or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        return None
    if not info.float32_or_unknown(0):
        return None
    w = b.T if a.get("transB", 0) else b
    has_c = len(info.given) > 2 and info.given[2]
    c = const_f32(info, 2, (1, 2)) if has_c else None
    if has_c:
        if c is None or a.get("beta", 1.0) != 1.0 or c.size != w.shape[1] or (c.ndim == 2 and c.shape[0] != 1):
            return None
        c = c.reshape(-1)
    packed = pack_weight(w, c, bf16=bf16)
    if packed is None:
        return None

    @absorbing(1, 2)
    def gemm_onednn(x, b, c=None, **attrs):
        return packed(x) if fits(x, packed.k) and x.ndim == 2 else unplanned(gemm, "Gemm", x, b, c, **attrs)

    return gemm_onednn


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


@register("MatMulNBits", domain=MS_DOMAIN, since=1)
def matmul_nbits(a, b, scales, zero_points=None, g_idx=None, bias=None, *, K, N, block_size, bits=4,
                 accuracy_level=0):
    """onnxruntime's weight-only low-bit MatMul: ``a @ dequant(b).T``. ``b`` holds N rows of
    ceil(K / block_size) blocks, each ``block_size`` codes of ``bits`` bits packed low bits first;
    a block's weight is (code - zero point) * scale, the zero point 2**(bits-1) when not given.
    Computed exactly in float32 whatever ``accuracy_level`` allows (that only permits less)."""
    if bits not in (2, 4, 8) or block_size < 16 or block_size & (block_size - 1):
        raise KernelError(f"MatMulNBits: bits={bits}, block_size={block_size}; supported: bits 2, 4 or 8 "
                          f"and a power-of-two block_size >= 16")
    a = _asarray(a)
    if a.shape[-1] != K:
        raise KernelError(f"MatMulNBits: input A has {a.shape[-1]} columns but K={K}")
    n_blocks = -(-K // block_size)
    codes = _unpack_bits(_asarray(b).reshape(N, -1), bits)[:, : n_blocks * block_size]
    codes = codes.reshape(N, n_blocks * block_size)[:, :K].astype(np.float32)
    scale = _asarray(scales).astype(np.float32).reshape(N, n_blocks)
    if zero_points is None:
        zp = np.full((N, n_blocks), 2 ** (bits - 1), np.float32)
    else:
        zero_points = _asarray(zero_points)
        if zero_points.dtype == np.uint8:  # packed like the codes
            zp = _unpack_bits(zero_points.reshape(N, -1), bits)[:, :n_blocks].astype(np.float32)
        else:  # one float zero point per block, in the scales' type
            zp = zero_points.astype(np.float32).reshape(N, n_blocks)
    block = _asarray(g_idx).astype(np.int64) if g_idx is not None else np.arange(K) // block_size
    w = (codes - zp[:, block]) * scale[:, block]  # (N, K)
    y = np.matmul(a.astype(np.float32, copy=False), w.T)
    if bias is not None:
        y += _asarray(bias).astype(np.float32)
    return y.astype(a.dtype, copy=False)


def _unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """(rows, bytes) uint8 -> (rows, bytes * 8 // bits) codes, the low bits of each byte first."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    codes = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)
