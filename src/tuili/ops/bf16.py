"""bf16 kernels: the nodes ``runtime.precision`` runs on bf16 operands with float32 accumulation.

Each entry of ``BF16_PREPARERS`` is a preparer (``NodeInfo -> callable | None``, like
``registry.prepares``) that the planner calls instead of the node's float32 preparer when the
session's precision policy puts the node in bf16. It returns a kernel with the float32 kernel's
calling convention and dtypes, whose weights were converted to bf16 and packed for oneDNN once
(``ops._torch``), or None where it cannot (weights computed at run time, layouts oneDNN does not
take): the node then stays float32. At run time an input that does not match what was planned
(dtype, rank, width) goes to the generic kernel, which explains any error.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tuili.ops._torch import packed_linear_bf16
from tuili.ops.conv import prepare_conv
from tuili.ops.fused import DOMAIN, apply_activation, fused_matmul, prepare_fused_conv
from tuili.ops.matmul import gemm, matmul
from tuili.ops.registry import NodeInfo

#: (domain, op type) -> bf16 preparer
BF16_PREPARERS: dict[tuple[str, str], Callable[[NodeInfo], Callable | None]] = {}

_F32 = np.dtype(np.float32)


def _bf16(op_type: str, domain: str = "") -> Callable:
    def deco(fn: Callable[[NodeInfo], Callable | None]) -> Callable:
        BF16_PREPARERS[(domain, op_type)] = fn
        return fn

    return deco


@_bf16("Conv")
def conv_bf16(info: NodeInfo) -> Callable | None:
    return prepare_conv(info, bf16=True)


@_bf16("FusedConv", DOMAIN)
def fused_conv_bf16(info: NodeInfo) -> Callable | None:
    return prepare_fused_conv(info, bf16=True)


def _const_f32(info: NodeInfo, i: int, ndim: int | tuple[int, ...]) -> np.ndarray | None:
    """Input ``i`` if it is a constant float32 array of rank ``ndim``, else None."""
    v = info.consts[i] if len(info.consts) > i else None
    ok = isinstance(v, np.ndarray) and v.dtype == _F32 and v.ndim in (ndim if isinstance(ndim, tuple) else (ndim,))
    return v if ok else None


def _fits(a: np.ndarray, k: int, min_ndim: int = 2) -> bool:
    return a.dtype == _F32 and a.ndim >= min_ndim and a.shape[-1] == k


@_bf16("MatMul")
def matmul_bf16(info: NodeInfo) -> Callable | None:
    """MatMul(A, W) with a constant 2-D W and A of rank >= 2 (BERT's projections)."""
    w = _const_f32(info, 1, 2)
    if w is None or info.dtypes[0] not in (None, _F32) or (info.shapes[0] is not None and len(info.shapes[0]) < 2):
        return None
    packed = packed_linear_bf16(w, None)
    if packed is None:
        return None

    def matmul_onednn_bf16(a, b):
        return packed(a) if _fits(a, packed.k) else matmul(a, b)

    return matmul_onednn_bf16


@_bf16("FusedMatMul", DOMAIN)
def fused_matmul_bf16(info: NodeInfo) -> Callable | None:
    """tuili::FusedMatMul(A, W, bias) with constant W (K, N) and bias (N,); the activation fused by
    oneDNN where it can, else applied in float32 after."""
    w = _const_f32(info, 1, 2)
    has_bias = len(info.given) > 2 and info.given[2]
    bias = _const_f32(info, 2, 1) if has_bias else None
    if w is None or (has_bias and bias is None) or info.dtypes[0] not in (None, _F32):
        return None
    activation, params = info.attrs.get("activation", ""), info.attrs.get("activation_params")
    packed = packed_linear_bf16(w, bias, activation)
    after = ""
    if packed is None:
        packed, after = packed_linear_bf16(w, bias), activation
    if packed is None:
        return None

    def fused_matmul_onednn_bf16(a, b, bias=None, **attrs):
        if not _fits(a, packed.k):
            return fused_matmul(a, b, bias, **attrs)
        return apply_activation(packed(a), after, params) if after else packed(a)

    return fused_matmul_onednn_bf16


@_bf16("Gemm")
def gemm_bf16(info: NodeInfo) -> Callable | None:
    """Gemm (opset 7+) ``A·B + C`` with constant B, transA=0, alpha=1 and C absent or a constant
    (N,)/(1, N) row with beta=1 (what the optimizer's gemm-weights pass leaves for a Linear layer)."""
    a = info.attrs
    b = _const_f32(info, 1, 2)
    if info.opset < 7 or b is None or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        return None
    if info.dtypes[0] not in (None, _F32):
        return None
    w = b.T if a.get("transB", 0) else b
    has_c = len(info.given) > 2 and info.given[2]
    c = _const_f32(info, 2, (1, 2)) if has_c else None
    if has_c:
        if c is None or a.get("beta", 1.0) != 1.0 or c.size != w.shape[1] or (c.ndim == 2 and c.shape[0] != 1):
            return None
        c = c.reshape(-1)
    packed = packed_linear_bf16(w, c)
    if packed is None:
        return None

    def gemm_onednn_bf16(x, b, c=None, **attrs):
        return packed(x) if _fits(x, packed.k) and x.ndim == 2 else gemm(x, b, c, **attrs)

    return gemm_onednn_bf16
