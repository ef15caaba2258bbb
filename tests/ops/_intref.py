"""Exact references for the integer ops (MatMulInteger, ConvInteger, QLinearConv, QLinearMatMul, ...).

onnxruntime is not a reference for these on every CPU: without VNNI its u8s8 kernels multiply with
`vpmaddubsw`, which adds each pair of u8*s8 products into a saturating int16 (255*127 + 255*127
becomes 32767). So tuili is checked against onnx's reference evaluator, which sums in exact integer
arithmetic, and against onnxruntime only where onnxruntime cannot saturate.

  ort_exact_reason(weights) -> why onnxruntime's products are exact for these weights, or None
  assert_exact(op, inputs, ..., weights=w, atol=0) -> the references used, after comparing
      tuili with each. ``atol`` is 0 for integer accumulators; 1 where the op requantizes
      (QLinear*, DynamicQuantizeLinear), for the float rounding of the output scale.
"""
from __future__ import annotations

import numpy as np
from onnx.reference import ReferenceEvaluator

from tests.ops._ortref import _feeds, make_model, run_model, run_node
from tuili.runtime import cpu

# onnxruntime's u8s8 kernels stay exact while every pair |w1| + |w2| <= 128 (255 * 128 < 2**15)
SEVEN_BIT = 64


def ort_exact_reason(weights: np.ndarray | None) -> str | None:
    """Why onnxruntime sums these products exactly on this CPU, or None if it may saturate."""
    feature = cpu.exact_int8_dot()
    if feature:
        return f"the CPU has {feature}: onnxruntime sums u8*s8 products in int32"
    if weights is None or weights.dtype != np.int8:
        return "no int8 weights: onnxruntime's u8u8 kernels widen to int16 before multiplying"
    if int(np.abs(weights.astype(np.int32)).max(initial=0)) <= SEVEN_BIT:
        return f"weights within 7 bits (|w| <= {SEVEN_BIT}): no pair of products exceeds int16"
    return None


def _compare(got, want, atol: int, where: str) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype, f"{where} output {i}: dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"{where} output {i}: shape {g.shape} != {w.shape}"
        if w.dtype.kind in "iu":
            diff = np.abs(g.astype(np.int64) - w.astype(np.int64))
            bad = int((diff > atol).sum())
            assert not bad, f"{where} output {i}: {bad} of {diff.size} values differ by up to {diff.max()} (atol {atol})"
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=f"{where} output {i}")


def assert_exact(op, inputs, n_outputs=1, opset=21, *, weights=None, atol=0, **attrs) -> list[str]:
    """Check tuili's kernel against the exact reference, then onnxruntime where it cannot saturate.
    ``weights`` is the operand onnxruntime's kernels take as signed (B of MatMulInteger, W of Conv)."""
    model, node = make_model(op, inputs, n_outputs, opset, **attrs)
    got = run_node(node, inputs, opset)
    feeds = _feeds(inputs)
    _compare(got, ReferenceEvaluator(model).run(None, feeds), atol, f"{op} vs onnx reference evaluator")
    used = ["onnx reference evaluator (exact integer arithmetic)"]
    reason = ort_exact_reason(weights)
    if reason:
        _compare(got, run_model(model, feeds), atol, f"{op} vs onnxruntime ({reason})")
        used.append(f"onnxruntime: {reason}")
    return used
