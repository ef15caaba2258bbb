"""int8 kernels on oneDNN: QLinearConv and QLinearMatMul with weights packed once, requantized output.

Each entry of ``INT8_PREPARERS`` is a preparer (``NodeInfo -> callable | None``, like
``registry.prepares``) that the planner calls for a node when ``runtime.int8`` allows oneDNN's int8
kernels on this CPU. It returns a kernel with the generic kernel's calling convention whose int8
weight is packed for oneDNN once per input shape (at plan time where the shape is static) (``torch.ops.onednn.qconv_prepack`` / ``qlinear_prepack``,
the kernels behind torch's x86 inductor quantization), or None where it cannot: then the node keeps
tuili's exact integer kernel. At run time an input that does not match what was planned (dtype,
rank, channels) goes to the generic kernel too.

What oneDNN computes: uint8 activations (any zero point; int8 ones are shifted to uint8 exactly by
flipping their sign bit, and the output back) times int8 weights (zero point 0, one
scale per output channel or one for all) summed in int32 — exact on a CPU whose int8 dot product
does not saturate (VNNI, AMX: ``runtime.cpu.exact_int8_dot``; the runtime asks for these kernels
only there) — then ``acc * x_scale * w_scale[c] + bias`` in float32, divided by ``y_scale``, rounded
and saturated to uint8 around ``y_zero_point``. The int32 bias of the ONNX op enters as the float
``bias * x_scale * w_scale[c]``. So the integer accumulation is exact and the requantization is
float32 arithmetic, as in onnxruntime's own kernels: outputs are within one quantization step of the
exact (float64) reference, and equal to it except where the rescaled value lies within float32
rounding of a half-way point.

oneDNN returns convolution outputs channels-last (NHWC-strided uint8 arrays); numpy kernels read
them through their strides and the next oneDNN convolution takes them without a reorder.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuili.ops._torch import _view, torch_or_none
from tuili.ops.conv import _ints, qlinear_conv, resolve_pads
from tuili.ops.quant import qlinear_matmul
from tuili.ops.registry import NodeInfo

#: (domain, op type) -> int8 preparer
INT8_PREPARERS: dict[tuple[str, str], Callable[[NodeInfo], Callable | None]] = {}

_U8, _I8 = np.dtype(np.uint8), np.dtype(np.int8)


def _int8(op_type: str, domain: str = "") -> Callable:
    def deco(fn: Callable[[NodeInfo], Callable | None]) -> Callable:
        INT8_PREPARERS[(domain, op_type)] = fn
        return fn

    return deco


def int8_available() -> str | None:
    """None if oneDNN's int8 convolution and linear kernels run here, else why not (the CPU's own
    features are ``runtime.int8``'s business)."""
    torch = torch_or_none()
    if torch is None:
        return "torch with oneDNN is not available"
    missing = [op for op in ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise")
               if not hasattr(torch.ops.onednn, op)]
    if missing:
        return f"this torch build lacks oneDNN's int8 ops ({', '.join('torch.ops.onednn.' + m for m in missing)})"
    return None


def _scalar(info: NodeInfo, i: int, dtype: np.dtype | None = None) -> Any:
    """Input ``i`` as a Python number if it is a constant one-element array (of ``dtype``), else None."""
    v = info.consts[i] if len(info.consts) > i else None
    if not isinstance(v, np.ndarray) or v.size != 1 or (dtype is not None and v.dtype != dtype):
        return None
    return v.reshape(-1)[0].item()


def _const(info: NodeInfo, i: int) -> np.ndarray | None:
    v = info.consts[i] if len(info.consts) > i else None
    return v if isinstance(v, np.ndarray) else None


def _weight(info: NodeInfo, i: int, channels_axis: int, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 weight, float32 scale per output channel) when input ``i`` is a constant int8 weight of
    rank ``ndim`` with zero points all 0 (input i + 2) and positive scales (input i + 1), else None."""
    w, s, z = _const(info, i), _const(info, i + 1), _const(info, i + 2)
    if w is None or s is None or z is None or w.dtype != _I8 or w.ndim != ndim:
        return None
    n = w.shape[channels_axis]
    if np.any(z) or z.size not in (1, n) or s.size not in (1, n) or s.dtype != np.float32:
        return None
    scale = np.broadcast_to(s.reshape(-1), (n,)).astype(np.float32)
    if not np.all(np.isfinite(scale) & (scale > 0)):
        return None
    return w, scale


@dataclass(frozen=True)
class _Activations:
    """Per-tensor parameters of an op's 8-bit input and output, as oneDNN's uint8 sees them: int8 data
    ``v`` is the uint8 ``v + 128`` (flip the sign bit) with its zero point moved by 128, exactly."""

    x_scale: float
    x_zero_point: int
    y_scale: float
    y_zero_point: int
    x_signed: bool
    y_signed: bool

    def x(self, x: np.ndarray) -> np.ndarray:
        return x.view(_U8) ^ np.uint8(0x80) if self.x_signed else x

    def y(self, y: np.ndarray) -> np.ndarray:
        if self.y_signed:
            y ^= np.uint8(0x80)
            return y.view(_I8)
        return y


def _activations(info: NodeInfo, x: int, y: int) -> _Activations | None:
    """The parameters when input ``x`` and the output are 8-bit with constant per-tensor scales and zero
    points (inputs x + 1, x + 2 and y, y + 1), else None."""
    xs, ys = _scalar(info, x + 1), _scalar(info, y)
    xz, yz = _const(info, x + 2), _const(info, y + 1)
    if xs is None or ys is None or xz is None or yz is None or not all(
            z.size == 1 and z.dtype in (_U8, _I8) for z in (xz, yz)):
        return None
    if info.dtypes[x] not in (None, xz.dtype) or not all(np.isfinite(s) and s > 0 for s in (xs, ys)):
        return None
    x_signed, y_signed = xz.dtype == _I8, yz.dtype == _I8
    return _Activations(float(xs), int(xz.reshape(-1)[0]) + 128 * x_signed, float(ys),
                        int(yz.reshape(-1)[0]) + 128 * y_signed, x_signed, y_signed)


#: input shapes a node keeps a weight packed for; beyond them it runs on the shape-agnostic packing
MAX_PACKED_SHAPES = 8


class _Packs:
    """One weight packed by oneDNN for each input shape met (``pack(shape)``, once per shape): packed
    for an unknown shape, oneDNN picks a blocked layout at run time that may differ and reorders the
    weight on every call (3x the time of a 1x1 convolution at batch 1)."""

    def __init__(self, pack: Callable[[list[int] | None], Any], shape: list[int] | None):
        self._pack, self._any = pack, pack(None)
        self._by_shape: dict[tuple[int, ...], Any] = {}
        if shape is not None:
            self._by_shape[tuple(shape)] = pack(shape)

    def __call__(self, shape: tuple[int, ...]) -> Any:
        packed = self._by_shape.get(shape)
        if packed is None:
            if len(self._by_shape) >= MAX_PACKED_SHAPES:
                return self._any
            packed = self._by_shape[shape] = self._pack(list(shape))  # racing threads pack alike: harmless
        return packed


@_int8("QLinearConv")
def qlinear_conv_onednn(info: NodeInfo) -> Callable | None:
    """QLinearConv, 2-D, 8-bit in and out, constant int8 weight (zero point 0) and int32 bias."""
    torch = torch_or_none()
    act = _activations(info, 0, 6)
    wt = _weight(info, 3, 0, 4)
    has_b = len(info.given) > 8 and info.given[8]
    b = info.consts[8] if has_b else None
    if torch is None or act is None or wt is None or (has_b and (not isinstance(b, np.ndarray) or b.dtype != np.int32)):
        return None
    (xs, xz, ys, yz), (w, ws) = (act.x_scale, act.x_zero_point, act.y_scale, act.y_zero_point), wt
    a = info.attrs
    group = int(a.get("group", 1))
    x_shape = info.shapes[0]
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or w.shape[0] % group or (
            a.get("kernel_shape") and list(a["kernel_shape"]) != list(w.shape[2:])):
        return None  # SAME pads depend on the run's size; a kernel_shape mismatch is the generic kernel's error
    strides, dilations = _ints(a.get("strides"), 2, 1), _ints(a.get("dilations"), 2, 1)
    pads = resolve_pads("QLinearConv", (0, 0), list(w.shape[2:]), strides, dilations, a.get("pads"),
                        a.get("auto_pad", "NOTSET"))
    if pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0 or (b is not None and b.shape != (w.shape[0],)):
        return None
    shape = list(x_shape) if x_shape is not None and all(isinstance(d, int) for d in x_shape) else None
    t_scale, t_w = torch.from_numpy(ws), torch.from_numpy(np.array(w, order="C"))

    def pack(x_shape: list[int] | None) -> Any:
        with torch.inference_mode():
            return torch.ops.onednn.qconv_prepack(t_w, t_scale, xs, xz, strides, pads[:2], dilations, group, x_shape)

    packs = _Packs(pack, shape)
    bias = None if b is None else torch.from_numpy((b.astype(np.float64) * xs * ws).astype(np.float32))
    w_zp = torch.zeros(w.shape[0], dtype=torch.int32)
    run = torch.ops.onednn.qconv2d_pointwise.default
    channels = w.shape[1] * group
    x_dtype = _I8 if act.x_signed else _U8

    def qlinear_conv_int8(x, *args, **attrs):
        if x.ndim != 4 or x.dtype != x_dtype or x.shape[1] != channels:
            return qlinear_conv(x, *args, **attrs)
        with torch.inference_mode():
            y = run(_view(act.x(x)), xs, xz, packs(x.shape), t_scale, w_zp, bias, strides, pads[:2], dilations, group,
                    ys, yz, None, "none", [], "").numpy()
        return act.y(y)

    return qlinear_conv_int8


@_int8("QLinearMatMul")
def qlinear_matmul_onednn(info: NodeInfo) -> Callable | None:
    """QLinearMatMul(A, ..., B, ...) with an 8-bit A of rank >= 2, a constant 2-D int8 B (zero point 0,
    per-tensor or per-column scales) and an 8-bit output."""
    torch = torch_or_none()
    act = _activations(info, 0, 6)
    wt = _weight(info, 3, 1, 2)
    if torch is None or act is None or wt is None or (info.shapes[0] is not None and len(info.shapes[0]) < 2):
        return None
    (xs, xz, ys, yz), (w, ws) = (act.x_scale, act.x_zero_point, act.y_scale, act.y_zero_point), wt
    k, n = w.shape
    x_dtype = _I8 if act.x_signed else _U8
    t_w = torch.from_numpy(np.array(w.T, order="C"))

    def pack(x_shape: list[int] | None) -> Any:
        with torch.inference_mode():
            return torch.ops.onednn.qlinear_prepack(t_w, x_shape)

    packs = _Packs(pack, None)
    t_scale, w_zp = torch.from_numpy(ws), torch.zeros(n, dtype=torch.int32)
    run = torch.ops.onednn.qlinear_pointwise.default

    def qlinear_matmul_int8(a, *args):
        if a.ndim < 2 or a.dtype != x_dtype or a.shape[-1] != k:
            return qlinear_matmul(a, *args)
        with torch.inference_mode():
            rows = _view(np.ascontiguousarray(act.x(a))).reshape(-1, k)
            y = run(rows, xs, xz, packs(tuple(rows.shape)), t_scale, w_zp, None, ys, yz, None, "none", [], "")
        return act.y(y.numpy().reshape(*a.shape[:-1], n))

    return qlinear_matmul_int8
