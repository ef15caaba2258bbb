"""Kernels of the fused ops tuili's graph optimizer creates (domain "tuili").

* ``tuili::FusedConv(X, W, B?, Z?)``: ``act(Conv(X, W, B) + Z)`` — a Conv, an optional residual
  addend ``Z`` (an Add that followed the Conv) and an optional activation, applied in place on the
  convolution's fresh output: no extra full-size temporaries.
  Attributes: the Conv attributes, ``activation`` ("" | Relu | LeakyRelu | Clip | HardSigmoid |
  HardSwish | Sigmoid | Tanh | Swish = x * sigmoid(x)) and ``activation_params`` (floats: alpha;
  min, max; alpha, beta).
* ``tuili::FusedMatMul(A, B, bias?)``: ``MatMul(A, B) + bias`` with the bias added in place.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.conv import conv, packed_conv
from tuili.ops.matmul import const_f32, fits, matmul, pack_weight
from tuili.ops.registry import NodeInfo, absorbing, prepares, register, unplanned

DOMAIN = "tuili"
ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Swish")


def apply_activation(y: np.ndarray, activation: str, params) -> np.ndarray:
    """``activation`` applied to ``y`` in place (y must be a fresh, writable float array)."""
    if not activation:
        return y
    dt = y.dtype.type
    if activation == "Relu":
        np.maximum(y, dt(0), out=y)
    elif activation == "LeakyRelu":
        alpha = params[0] if params else 0.01
        if 0.0 <= alpha <= 1.0:
            np.maximum(y, y * dt(alpha), out=y)
        else:
            np.copyto(y, y * dt(alpha), where=y < 0)
    elif activation == "Clip":
        lo = params[0] if params and len(params) > 0 else -np.inf
        hi = params[1] if params and len(params) > 1 else np.inf
        np.clip(y, dt(lo), dt(hi), out=y)
    elif activation == "HardSigmoid":
        alpha, beta = (params or [0.2, 0.5])[:2]
        y *= dt(alpha)
        y += dt(beta)
        np.clip(y, dt(0), dt(1), out=y)
    elif activation == "HardSwish":
        t = y * dt(1.0 / 6.0)
        t += dt(0.5)
        np.clip(t, dt(0), dt(1), out=t)
        y *= t
    elif activation == "Sigmoid":
        with np.errstate(over="ignore"):
            np.negative(y, out=y)
            np.exp(y, out=y)
            y += dt(1)
            np.reciprocal(y, out=y)
    elif activation == "Swish":
        with np.errstate(over="ignore"):
            t = np.negative(y)
            np.exp(t, out=t)
            t += dt(1)
            np.reciprocal(t, out=t)
        y *= t
    elif activation == "Tanh":
        np.tanh(y, out=y)
    else:
        raise KernelError(f"tuili::FusedConv: unknown activation {activation!r}; one of {', '.join(ACTIVATIONS)}")
    return y


def _writable(y: np.ndarray, *keep: np.ndarray | None) -> np.ndarray:
    if not y.flags.writeable or any(k is not None and np.may_share_memory(y, k) for k in keep):
        return y.copy()
    return y


@register("FusedConv", domain=DOMAIN, since=1)
def fused_conv(x, w, b=None, z=None, *, activation="", activation_params=None, auto_pad="NOTSET", dilations=None,
               group=1, kernel_shape=None, pads=None, strides=None):
    y = conv(x, w, b, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
             strides=strides)
    y = _writable(y, x, w, b)
    if z is not None:
        if z.shape == y.shape and z.dtype == y.dtype:
            y += z
        else:  # Z broadcasts to a larger shape: the Add's output is that shape
            y = np.add(y, z)
    return apply_activation(y, activation, activation_params)


@prepares(fused_conv)
def prepare_fused_conv(info: NodeInfo, bf16: bool = False):
    """Plan time: the whole fused node (bias, residual addend, activation) as one oneDNN call on a
    packed weight, where oneDNN can run it (``conv.packed_conv``; bf16 operands with ``bf16``)."""
    activation, params = info.attrs.get("activation", ""), info.attrs.get("activation_params")
    packed = packed_conv(info, activation, params, post=lambda y: apply_activation(y, activation, params), bf16=bf16)
    if packed is None:
        return None

    @absorbing(1, 2)
    def fused_conv_onednn(x, w, b=None, z=None, **attrs):
        if x.ndim != 4 or x.dtype != np.float32 or x.shape[1] != w.shape[1] * packed.group:
            return unplanned(fused_conv, "FusedConv", x, w, b, z, **attrs)
        if z is None or packed.fits(x, z):
            return packed(x, z)
        # an addend that broadcasts (or a residual add oneDNN cannot end with this activation)
        return apply_activation(np.add(packed.plain(x), z), activation, params)

    return fused_conv_onednn


@register("FusedMatMul", domain=DOMAIN, since=1)
def fused_matmul(a, b, bias=None, *, activation="", activation_params=None):
    y = matmul(a, b)
    y = _writable(y, a, b)
    if bias is not None:
        if np.broadcast_shapes(y.shape, bias.shape) == y.shape and bias.dtype == y.dtype:
            y += bias
        else:
            y = np.add(y, bias)
    return apply_activation(y, activation, activation_params)


@prepares(fused_matmul)
def prepare_fused_matmul(info: NodeInfo, bf16: bool = False):
    """Plan time: tuili::FusedMatMul(A, W, bias) with constant W (K, N) and bias (N,) as one oneDNN
    inner product (bf16 operands with ``bf16``), the activation fused by oneDNN where it can, else
    applied in float32 after; None keeps numpy."""
    w = const_f32(info, 1, 2)
    has_bias = len(info.given) > 2 and info.given[2]
    bias = const_f32(info, 2, 1) if has_bias else None
    if w is None or (has_bias and bias is None) or not info.float32_or_unknown(0):
        return None
    activation, params = info.attrs.get("activation", ""), info.attrs.get("activation_params")
    packed = pack_weight(w, bias, activation, bf16=bf16)
    after = ""
    if packed is None:
        packed, after = pack_weight(w, bias, bf16=bf16), activation
    if packed is None:
        return None

    @absorbing(1, 2)
    def fused_matmul_onednn(a, b, bias=None, **attrs):
        if not fits(a, packed.k, min_ndim=1):
            return unplanned(fused_matmul, "FusedMatMul", a, b, bias, **attrs)
        return apply_activation(packed(a), after, params) if after else packed(a)

    return fused_matmul_onednn
