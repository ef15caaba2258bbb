"""torch's ATen/oneDNN kernels on zero-copy views of numpy arrays, for the shapes where they win.

The engine stays tuili's: the planner decides at plan time which nodes run here, their weights are
packed once into oneDNN's blocked layout (``mkldnn._reorder_convolution_weight``), and a run hands
oneDNN ``torch.from_numpy`` views and takes its result back as a numpy view (no copies either way).
oneDNN returns channels-last (NHWC-strided) float32 arrays; numpy kernels read them through their
strides, and the next oneDNN convolution takes them without a reorder.

In bf16 (``bf16=True``, chosen per node by ``runtime.precision``) the weight is converted to bfloat16
once, at packing; a run casts its float32 input to bfloat16 (channels-last for convolutions), oneDNN
multiplies bf16 operands accumulating in float32, and the result is cast back to float32: the
kernel's calling convention and dtypes are those of its float32 version.

torch is imported on first use (``torch_or_none``); without it, or without oneDNN, every caller
keeps its numpy kernel.
"""
from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
# read-only feeds become read-only-in-spirit tensors here: no kernel of this module writes its inputs
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)

#: tuili::FusedConv activation -> (oneDNN post-op name, how its scalars come from activation_params)
_UNARY: dict[str, tuple[str, Callable[[list], list]]] = {
    "": ("none", lambda p: []),
    "Relu": ("relu", lambda p: []),
    "Sigmoid": ("sigmoid", lambda p: []),
    "Tanh": ("tanh", lambda p: []),
    "HardSwish": ("hardswish", lambda p: []),
    "Swish": ("swish", lambda p: []),
    "LeakyRelu": ("leaky_relu", lambda p: [p[0] if p else 0.01]),
    "Clip": ("hardtanh", lambda p: [p[0] if len(p) > 0 else float("-inf"), p[1] if len(p) > 1 else float("inf")]),
}


@functools.cache
def torch_or_none() -> Any:
    """The torch module if its oneDNN convolution ops can run here, else None."""
    try:
        import torch

        if not torch.backends.mkldnn.is_available():
            return None
        torch.ops.mkldnn._convolution_pointwise  # noqa: B018 - raises if this build lacks the op
        return torch
    except Exception as e:  # noqa: BLE001 - any failure means: keep the numpy kernels
        log.info("torch/oneDNN kernels unavailable (%s: %s); numpy kernels only", type(e).__name__, e)
        return None


def bf16_available() -> str | None:
    """None if oneDNN's bf16 convolution and linear kernels run here, else why not."""
    torch = torch_or_none()
    if torch is None:
        return "torch with oneDNN is not available"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch build lacks oneDNN's linear kernel (torch.ops.mkldnn._linear_pointwise)"
    return None


def _view(x: np.ndarray) -> Any:
    """A torch tensor over x's memory (a copy only when x has negative or unaligned strides)."""
    torch = torch_or_none()
    try:
        return torch.from_numpy(x)
    except (ValueError, TypeError, RuntimeError):
        return torch.from_numpy(np.ascontiguousarray(x))


#: input shapes a convolution keeps a weight packing for; more shapes share the first one's
MAX_PACKED_SHAPES = 4


class PackedConv2d:
    """A 2-D float32 convolution whose weight was packed for oneDNN once (``packed_conv2d``):
    ``conv(x, z=None) -> act(conv(x) + b + z)`` as a numpy array; ``z`` must have the output's shape
    (``fits(x, z)``).

    oneDNN picks its algorithm, and the weight layout it wants, by the input's shape: a weight packed
    without knowing the batch runs some shapes an order of magnitude slower (ResNet-50's 256->1024 1x1
    convolution at 14x14, batch 1: 6.3 ms against 0.5 ms packed for that shape). So the weight is
    packed again, from the packed copy itself (``to_dense``), the first time each input shape comes
    (up to ``MAX_PACKED_SHAPES``), and the shape-blind packing is dropped: one copy per shape served."""

    def __init__(self, torch: Any, packed: Any, bias: Any, pad: list[int], stride: list[int], dil: list[int],
                 group: int, kernel: tuple[int, int], m: int, unary: str, scalars: list,
                 post: Callable[[np.ndarray], np.ndarray] | None, bf16: bool = False,
                 packed_for: tuple[int, ...] | None = None):
        self.torch, self.bias = torch, bias
        # input shape -> the weight packed for it; ``generic`` until the first shape is seen
        self.by_shape: dict[tuple[int, ...], Any] = {packed_for: packed} if packed_for else {}
        self.generic: Any = None if packed_for else packed
        self._lock = threading.Lock()
        self.bf16 = bf16
        # oneDNN's residual-add convolution wants its bias in the input's dtype
        self.add_bias = bias.to(torch.bfloat16) if bf16 and bias is not None else bias
        self.pad, self.stride, self.dil, self.group = pad, stride, dil, group
        self.kernel, self.m, self.unary, self.scalars = kernel, m, unary, scalars
        # oneDNN fuses only ReLU after the residual add; other activations run as ``post`` (in place)
        self.add_unary = None if unary == "none" else unary if unary == "relu" else None
        self.post = None if unary in ("none", "relu") else post  # None: no residual add (see fits)
        self._conv = torch.ops.mkldnn._convolution_pointwise.default
        self._conv_add = torch.ops.mkldnn._convolution_pointwise.binary

    def weight(self, shape: tuple[int, ...]) -> Any:
        """The weight packed for inputs of ``shape`` (packed now if this shape is new)."""
        packed = self.by_shape.get(shape)
        if packed is not None:
            return packed
        with self._lock:
            if shape in self.by_shape:
                return self.by_shape[shape]
            known = next(iter(self.by_shape.values()), self.generic)
            if len(self.by_shape) >= MAX_PACKED_SHAPES:
                return known
            with self.torch.inference_mode():
                packed = self.torch.ops.mkldnn._reorder_convolution_weight(
                    known.to_dense(), self.pad, self.stride, self.dil, self.group, list(shape))
            self.by_shape[shape] = packed
            self.generic = None
            return packed

    @property
    def packed(self) -> Any:
        """A packing of the weight (any shape's)."""
        return next(iter(self.by_shape.values()), self.generic)

    def out_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        sp = tuple((x_shape[2 + i] + 2 * self.pad[i] - self.dil[i] * (self.kernel[i] - 1) - 1) // self.stride[i] + 1
                   for i in range(2))
        return (x_shape[0], self.m) + sp

    def fits(self, x: np.ndarray, z: np.ndarray) -> bool:
        """True if ``z`` can be the fused addend: float32, exactly the output's shape, and an
        activation oneDNN fuses after the add or a ``post`` to apply it."""
        return (z.dtype == np.float32 and z.shape == self.out_shape(x.shape)
                and (self.unary in ("none", "relu") or self.post is not None))

    def _in(self, a: np.ndarray) -> Any:
        t = _view(a)
        if self.bf16:  # one pass: cast and go channels-last, the layout oneDNN's bf16 kernels run in
            t = t.to(dtype=self.torch.bfloat16, memory_format=self.torch.channels_last)
        return t

    def __call__(self, x: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        with self.torch.inference_mode():
            if z is None:
                y = self._conv(self._in(x), self.weight(x.shape), self.bias, self.pad, self.stride, self.dil,
                               self.group, self.unary, self.scalars, "")
            else:
                y = self._conv_add(self._in(x), self._in(z), self.weight(x.shape), self.add_bias, self.pad, self.stride,
                                   self.dil, self.group, "add", None, self.add_unary,
                                   self.scalars if self.add_unary else [], "")
            if self.bf16:
                y = y.float()  # keeps the channels-last strides
            if z is not None and self.post is not None:
                return self.post(y.numpy())
            return y.numpy()

    def plain(self, x: np.ndarray) -> np.ndarray:
        """``conv(x) + b`` without the activation (for an addend ``fits`` refuses)."""
        with self.torch.inference_mode():
            y = self._conv(self._in(x), self.weight(x.shape), self.bias, self.pad, self.stride, self.dil, self.group,
                           "none", [], "")
            return (y.float() if self.bf16 else y).numpy()


def packed_conv2d(w: np.ndarray, b: np.ndarray | None, pads: list[int], strides: list[int], dilations: list[int],
                  group: int, in_shape: tuple | None, activation: str = "",
                  activation_params: list | None = None,
                  post: Callable[[np.ndarray], np.ndarray] | None = None, bf16: bool = False) -> PackedConv2d | None:
    """``w`` (M, C/group, kh, kw) float32 packed for oneDNN now, or None where oneDNN cannot run the
    convolution (asymmetric pads, an activation it has no post-op for, no oneDNN). ``post(y)``
    applies the activation in place where oneDNN cannot fuse it after a residual add. ``bf16``:
    packed as bfloat16, run on bf16 operands with float32 accumulation (float32 in and out)."""
    torch = torch_or_none()
    if torch is None or w.dtype != np.float32 or w.ndim != 4 or activation not in _UNARY:
        return None
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
        return None
    unary, scalars = _UNARY[activation][0], _UNARY[activation][1](list(activation_params or []))
    pad, stride, dil = [int(p) for p in pads[:2]], [int(s) for s in strides], [int(d) for d in dilations]
    size = list(in_shape) if in_shape is not None and all(isinstance(d, int) for d in in_shape) else None
    with torch.inference_mode():
        weight = torch.from_numpy(np.array(w, copy=True, order="C"))
        if bf16:
            weight = weight.to(torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_convolution_weight(weight, pad, stride, dil, group, size)
    bias = None if b is None else torch.from_numpy(np.array(b, dtype=np.float32, copy=True, order="C"))
    return PackedConv2d(torch, packed, bias, pad, stride, dil, int(group), (w.shape[2], w.shape[3]), w.shape[0],
                        unary, scalars, post, bf16, tuple(size) if size is not None else None)


#: activations oneDNN fuses into a linear (matmul) kernel, by tuili::FusedMatMul's activation name
_LINEAR_UNARY = {"": "none", "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}


class PackedLinear:
    """``x @ w + b`` (then an activation oneDNN fuses) with ``w`` (K, N) packed once
    (``packed_linear``); float32 in and out, any leading dims on ``x``. In bf16 the operands are
    bf16 and the sums float32."""

    def __init__(self, torch: Any, packed: Any, bias: Any, k: int, n: int, unary: str, bf16: bool):
        self.torch, self.packed, self.bias, self.k, self.n, self.unary = torch, packed, bias, k, n, unary
        self.bf16 = bf16
        self._linear = torch.ops.mkldnn._linear_pointwise.default

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            t = _view(x)
            t = t.to(torch.bfloat16).contiguous() if self.bf16 else t.contiguous()
            y = self._linear(t.reshape(-1, self.k), self.packed, self.bias, self.unary, [], "")
            if self.bf16:
                y = y.float()
            return y.reshape(*x.shape[:-1], self.n).numpy()


def packed_linear(w: np.ndarray, b: np.ndarray | None, activation: str = "", bf16: bool = False) -> PackedLinear | None:
    """``w`` (K, N) float32 (a MatMul's right operand) packed for oneDNN's inner product (as bf16
    with ``bf16``), ``b`` (N,) kept float32, or None where it cannot run (no oneDNN or no bf16
    linear, not 2-D, an activation it does not fuse)."""
    torch = torch_or_none()
    if torch is None or (bf16 and bf16_available() is not None) or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return None
    if (w.dtype != np.float32 or w.ndim != 2 or activation not in _LINEAR_UNARY
            or (b is not None and (b.dtype != np.float32 or b.shape != (w.shape[1],)))):
        return None
    with torch.inference_mode():
        weight = torch.from_numpy(np.ascontiguousarray(w.T))  # oneDNN's (N, K)
        if bf16:
            weight = weight.to(torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
    bias = None if b is None else torch.from_numpy(np.array(b, copy=True, order="C"))
    return PackedLinear(torch, packed, bias, int(w.shape[0]), int(w.shape[1]), _LINEAR_UNARY[activation], bf16)


def matmul_on_torch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (float32, numpy's broadcasting rules) on torch's BLAS: a run whose other kernels
    are oneDNN's then uses one thread pool, not OpenBLAS's beside torch's OpenMP."""
    torch = torch_or_none()
    with torch.inference_mode():
        return torch.matmul(_view(a), _view(b)).numpy()


def gelu_on_torch(approximate: str = "none") -> Callable[[np.ndarray], np.ndarray] | None:
    """Gelu (exact erf form, or ``approximate="tanh"``) of a float32 array on torch's kernel."""
    torch = torch_or_none()
    if torch is None or approximate not in ("none", "tanh"):
        return None
    gelu = torch.nn.functional.gelu

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return gelu(_view(x), approximate=approximate).numpy()

    return run


def layer_norm_on_torch(scale: np.ndarray, bias: np.ndarray | None, epsilon: float
                        ) -> Callable[[np.ndarray], np.ndarray] | None:
    """LayerNormalization over the last axis of a float32 array, ``scale`` and ``bias`` (its width,
    float32) copied once, on torch's kernel."""
    torch = torch_or_none()
    if torch is None:
        return None
    width = (int(scale.size),)
    w = torch.from_numpy(np.array(scale, np.float32).reshape(-1))
    b = None if bias is None else torch.from_numpy(np.array(bias, np.float32).reshape(-1))
    layer_norm = torch.nn.functional.layer_norm

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return layer_norm(_view(x), width, w, b, epsilon).numpy()

    return run


def attention_on_torch(q: np.ndarray, k_t: np.ndarray, v: np.ndarray, bias: np.ndarray | None,
                       scale: float) -> np.ndarray:
    """``Softmax(scale * q @ k_t + bias) @ v`` (float32) with every step on torch (a fully masked row
    is NaN, as Softmax gives)."""
    torch = torch_or_none()
    with torch.inference_mode():
        scores = torch.matmul(_view(q), _view(k_t))
        if scale != 1.0:
            scores.mul_(scale)
        if bias is not None:
            scores = scores + _view(bias)
        return torch.matmul(torch.softmax(scores, dim=-1), _view(v)).numpy()


def pool2d_on_torch(kind: str, kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
                    count_include_pad: bool = False, ceil_mode: bool = False) -> Callable[[np.ndarray], np.ndarray] | None:
    """A 2-D max/average pooling of float32 NCHW arrays on torch's kernels (which keep the
    channels-last layout oneDNN's convolutions return), or None where torch's pooling differs from
    ONNX's: asymmetric pads, pads over half the window, dilated average pooling. With ``ceil_mode``
    both drop a last window that would start in the right padding."""
    torch = torch_or_none()
    if torch is None or len(kernel) != 2 or len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        return None
    pad = [int(p) for p in pads[:2]]
    if any(p < 0 or 2 * p > k for p, k in zip(pad, kernel, strict=True)):
        return None
    k, s, d = [int(v) for v in kernel], [int(v) for v in strides], [int(v) for v in dilations]
    f = torch.nn.functional
    if kind == "max":
        def run(t):
            return f.max_pool2d(t, k, s, pad, d, ceil_mode=ceil_mode)
    elif kind == "average" and d == [1, 1]:
        def run(t):
            return f.avg_pool2d(t, k, s, pad, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    else:
        return None

    def pool(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return run(_view(x)).numpy()

    return pool
