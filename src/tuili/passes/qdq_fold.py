"""Fold QDQ groups into the ONNX integer ops that compute them (QOperator form):

    Q(Conv(DQ(x_q), DQ(w_q), DQ(b_q)?))  [Relu before the Q]  => QLinearConv(x_q, ..., w_q, ..., y, b_q)
    Q(MatMul(DQ(a_q), DQ(w_q)))          [Relu before the Q]  => QLinearMatMul(a_q, ..., w_q, ..., y)
    Q(MaxPool(DQ(x_q)))  (Q and DQ with the same parameters)  => MaxPool(x_q)   (and the shape ops)

What a QDQ graph computes in float (dequantize, multiply-accumulate, quantize) the QLinear op
computes on the integers: the same value up to float rounding before the final round, so the result
is within one quantization step of the float graph's, and of onnxruntime's (which fuses the same
groups). A group folds when:

* x / a and the output are 8-bit with constant per-tensor scales and zero points;
* the weight is a constant 8-bit tensor, symmetric (zero points 0: what quantizers write and int8
  kernels take), per tensor or per output channel (axis 0 for Conv; the last axis of a 2-D MatMul
  weight);
* the bias, if any, is DQ(int32, x_scale * w_scale, 0) — what quantizers write so that integer
  kernels add it exactly;
* a Relu between the op and the Q is redundant: the Q's zero point is its type's minimum, so
  saturation clamps at the real 0 already.

A MaxPool or a shape op (Reshape, Flatten, Transpose, Squeeze, Unsqueeze) between a DQ and a Q with
the same scale and zero point is exact on the integers: max commutes with the increasing map DQ,
and Q(DQ(v)) = v. (MaxPool on 8-bit data is ONNX from opset 12.)

The DequantizeLinear nodes stay for their other readers; the dead ones are removed later. The
session runs this pass only where int8 kernels are fast (``runtime.int8``), before the pipeline
(whose constant folding would turn DQ(w_q) into float weights); onnxruntime fuses QDQ itself, so
``--target onnx`` leaves it out.
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.ir.core import Node, Value

from .base import attr, const_of
from .pattern import Match, Pat, RewritePass, Rule, rebuilt

log = logging.getLogger(__name__)

_Q8 = (np.dtype(np.uint8), np.dtype(np.int8))


def _dq(v: Value) -> bool:
    p = v.producer
    return p is not None and p.op_type == "DequantizeLinear" and p.domain == "" and not attr(p, "block_size", 0)


def _params(node: Node) -> tuple[Value, Value, Value | None, np.ndarray, np.ndarray | None] | None:
    """(data, scale, zero point, scale const, zero point const) of a DQ or Q node with constant parameters."""
    ins = list(node.inputs) + [None] * (3 - len(node.inputs))
    data, scale, zp = ins[:3]
    s = const_of(scale)
    z = const_of(zp) if zp is not None else None
    if data is None or scale is None or s is None or s.dtype != np.float32 or (zp is not None and z is None):
        return None
    return data, scale, zp, s, z


def _per_tensor8(node: Node) -> tuple[Value, Value, Value, np.ndarray, np.ndarray] | None:
    """(data, scale, zero point, scale const, zero point const) of a Q/DQ node with 8-bit per-tensor
    parameters."""
    p = _params(node)
    if p is None:
        return None
    data, scale, zp, s, z = p
    if zp is None or z is None or s.size != 1 or z.size != 1 or z.dtype not in _Q8:
        return None
    if node.op_type == "QuantizeLinear" and (attr(node, "output_dtype", 0) or not attr(node, "saturate", 1)):
        return None  # output_dtype must agree with the zero point; the kernel's rules decide, keep it
    return data, scale, zp, s, z


def _weight(node: Node, axis: int, ndim: int) -> tuple[Value, Value, Value | None, np.ndarray, np.ndarray] | None:
    """(w_q, scale, zero point, scale const, w_q const) of DQ(w_q) with a constant symmetric 8-bit weight of rank
    ``ndim``, per tensor or per channel along ``axis``."""
    p = _params(node)
    if p is None:
        return None
    w = const_of(p[0])
    if w is None or w.dtype not in _Q8 or w.ndim != ndim or (p[4] is not None and (p[4].dtype != w.dtype or np.any(p[4]))):
        return None
    s, z = p[3], p[4]
    dq_axis = attr(node, "axis", 1)
    per_channel = s.size > 1 or (z is not None and z.size > 1)
    if per_channel and ((dq_axis + ndim) % ndim != axis or s.size != w.shape[axis]
                        or (z is not None and z.size not in (1, w.shape[axis]))):
        return None
    if s.ndim > 1 or (z is not None and z.ndim > 1):
        return None
    return p[0], p[1], p[2], s, w


def _bias(node: Node, x_scale: np.ndarray, w_scale: np.ndarray, channels: int) -> Value | None:
    """b_q of DQ(b_q int32, x_scale * w_scale, 0), or None."""
    p = _params(node)
    if p is None:
        return None
    b = const_of(p[0])
    if b is None or b.dtype != np.int32 or b.shape != (channels,) or (p[4] is not None and np.any(p[4])):
        return None
    expected = np.broadcast_to(np.float32(x_scale.reshape(-1)[0]) * w_scale.reshape(-1), (channels,))
    if p[3].size not in (1, channels) or not np.allclose(p[3].reshape(-1), expected, rtol=1e-6, atol=0):
        return None
    return p[0]


def _relu_redundant(m: Match, zero_point: np.ndarray) -> bool:
    """No Relu, or one the Q's saturation makes redundant (its zero point is the type's minimum)."""
    return "relu" not in m.bound or int(zero_point.reshape(-1)[0]) == int(np.iinfo(zero_point.dtype).min)


def _zero(m: Match, zp: Value | None, dtype: np.dtype, hint: str) -> Value:
    if zp is not None:
        return zp
    return m.graph.add_initializer(m.graph.unique_name(hint), np.zeros((), dtype))


def _fold(m: Match, op_type: str, axis: int, ndim: int) -> list[Node] | None:
    op, q = m["op"], m.root
    out = _per_tensor8(q)
    x = _per_tensor8(m["x"].producer)
    w = _weight(m["w"].producer, axis, ndim)
    if out is None or x is None or w is None or not _relu_redundant(m, out[4]):
        return None
    zero = _zero(m, w[2], w[4].dtype, f"{op.name}_w_zero_point")
    inputs: list[Value | None] = [x[0], x[1], x[2], w[0], w[1], zero, out[1], out[2]]
    if op_type == "QLinearConv":
        if len(op.inputs) > 2 and op.inputs[2] is not None:
            b = op.inputs[2]
            bq = _bias(b.producer, x[3], w[3], w[4].shape[0]) if _dq(b) and b.producer is not None else None
            if bq is None:
                return None
            inputs.append(bq)
    return [rebuilt(op, op_type=op_type, inputs=inputs, outputs=[q.outputs[0]])]


def _fold_conv(m: Match) -> list[Node] | None:
    return _fold(m, "QLinearConv", 0, len(m["op"].inputs[1].shape or ()) or 4)


def _fold_matmul(m: Match) -> list[Node] | None:
    return _fold(m, "QLinearMatMul", 1, 2)


PASS_THROUGH = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def _same_params(a: Node, b: Node) -> bool:
    pa, pb = _per_tensor8(a), _per_tensor8(b)
    return (pa is not None and pb is not None and pa[3] == pb[3] and pa[4].dtype == pb[4].dtype
            and np.array_equal(pa[4], pb[4]))


def _fold_pass_through(m: Match) -> list[Node] | None:
    op, q, dq = m["op"], m.root, m["x"].producer
    if len(op.outputs) != 1 or (op.op_type == "MaxPool" and op.opset < 12) or not _same_params(dq, q):
        return None
    return [rebuilt(op, inputs=[dq.inputs[0]] + list(op.inputs[1:]), outputs=[q.outputs[0]])]


def _group(op: str) -> tuple[Pat, Pat]:
    """Q(op(DQ, DQ, ...)) and Q(Relu(op(DQ, DQ, ...)))."""
    inner = Pat(op, name="op", uses=1, inputs=(Pat(name="x", where=_dq), Pat(name="w", where=_dq)))
    relu = Pat("Relu", name="relu", uses=1, inputs=(inner,))
    return Pat("QuantizeLinear", inputs=(inner,)), Pat("QuantizeLinear", inputs=(relu,))


RULES = tuple(Rule(p, fold) for op, fold in (("Conv", _fold_conv), ("MatMul", _fold_matmul)) for p in _group(op)) + (
    Rule(Pat("QuantizeLinear", inputs=(Pat(PASS_THROUGH, name="op", uses=1, inputs=(Pat(name="x", where=_dq),)),)),
         _fold_pass_through),)


class FoldQDQ(RewritePass):
    name = "fold-qdq"
    level = 2
    emits_custom_ops = True  # standard ops, but only worth it where tuili's int8 kernels are fast
    rules = RULES
