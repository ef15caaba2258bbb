"""bf16 kernels: the nodes ``runtime.precision`` runs on bf16 operands with float32 accumulation.

Each entry of ``BF16_PREPARERS`` is a preparer (``NodeInfo -> callable | None``, like
``registry.prepares``) that the planner calls instead of the node's float32 preparer when the
session's precision policy puts the node in bf16: the float32 preparer itself with ``bf16=True``.
It returns a kernel with the float32 kernel's calling convention and dtypes, whose weights were
converted to bf16 and packed for oneDNN once (``ops._torch``), or None where it cannot (weights
computed at run time, layouts oneDNN does not take): the node then stays float32. At run time an
input that does not match what was planned (dtype, rank, width) goes to the generic kernel, which
explains any error.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from tuili.ops.conv import prepare_conv
from tuili.ops.fused import DOMAIN, prepare_fused_conv, prepare_fused_matmul
from tuili.ops.matmul import prepare_gemm, prepare_matmul
from tuili.ops.registry import NodeInfo

#: (domain, op type) -> bf16 preparer
BF16_PREPARERS: dict[tuple[str, str], Callable[[NodeInfo], Callable | None]] = {
    key: functools.partial(prepare, bf16=True)
    for key, prepare in {
        ("", "Conv"): prepare_conv,
        (DOMAIN, "FusedConv"): prepare_fused_conv,
        ("", "MatMul"): prepare_matmul,
        (DOMAIN, "FusedMatMul"): prepare_fused_matmul,
        ("", "Gemm"): prepare_gemm,
    }.items()
}
