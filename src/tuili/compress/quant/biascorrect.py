"""Bias correction: quantizing a layer's weights shifts the mean of its output; add the shift back
to the bias, from the mean of the layer's float input over the calibration data (Nagel et al.,
"Data-Free Quantization Through Weight Equalization and Bias Correction", 2019, with E[x] measured
instead of derived from BatchNorm statistics).

For y = W x + b quantized to y' = Q(W) x + b', E[y'] = E[y] when b' = b + (W - Q(W)) E[x]. Only the
weights' rounding error is corrected (the activations' rounding error is zero-mean); the correction
of each layer depends on its own float input alone, so one calibration pass serves every layer.
"""
from __future__ import annotations

import numpy as np

from tuili.ir import Node


class MeanObserver:
    """Running mean of a tensor per channel along ``axis``."""

    def __init__(self, axis: int):
        self.axis = axis
        self.sum: np.ndarray | None = None
        self.n = 0

    def update(self, x: np.ndarray) -> None:
        c = np.moveaxis(np.asarray(x, np.float64), self.axis, 0).reshape(x.shape[self.axis], -1)
        s = c.sum(axis=1)
        self.sum = s if self.sum is None else self.sum + s
        self.n += c.shape[1]

    @property
    def mean(self) -> np.ndarray:
        assert self.sum is not None and self.n
        return self.sum / self.n


class Tee:
    """Feeds every batch to several observers of the same tensor."""

    def __init__(self, *observers):
        self.observers = observers

    def update(self, x: np.ndarray) -> None:
        for o in self.observers:
            o.update(x)


def input_axis(node: Node) -> int | None:
    """The channel axis of a compute node's activation input whose mean bias correction needs, or
    None when the node has no bias to correct (MatMul) or its input layout is unusual."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attrs.get("transA", 0) else 1
    return None


def output_shift(node: Node, w: np.ndarray, w_deq: np.ndarray, x_mean: np.ndarray) -> np.ndarray:
    """(W - Q(W)) E[x] per output channel, in the units of the node's bias input."""
    dw = w.astype(np.float64) - w_deq.astype(np.float64)
    if node.op_type == "Conv":
        cout, cin_g = dw.shape[:2]
        groups = int(node.attrs.get("group", 1))
        per_out = dw.reshape(cout, cin_g, -1).sum(axis=2)  # (Cout, Cin/g): kernel taps summed
        mean_g = np.repeat(x_mean.reshape(groups, cin_g), cout // groups, axis=0)
        return (per_out * mean_g).sum(axis=1)
    # Gemm: alpha * A' B' + beta * C, B' = B (K, N) or B^T with B (N, K)
    shift = dw @ x_mean if node.attrs.get("transB", 0) else x_mean @ dw
    return shift * float(node.attrs.get("alpha", 1.0)) / float(node.attrs.get("beta", 1.0))
