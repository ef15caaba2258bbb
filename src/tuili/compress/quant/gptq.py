"""GPTQ-style error-compensating rounding of 4-bit block weights (Frantar et al., 2022).

Round-to-nearest quantizes every weight on its own. GPTQ quantizes one input row of the weight at a
time and spreads each row's rounding error over the rows not yet quantized, weighted by the inverse
of the layer's input Hessian H = X^T X (X: the calibration activations entering the layer), so the
layer's *output* error ||X W - X Q||^2 is what gets minimized rather than the weights' own error.
A block's scale and zero point are chosen when the block starts, from the weights as updated so far.

The Hessians come from one calibration pass of the float model (every layer sees float inputs: the
"parallel" variant, not the sequential one that re-runs quantized prefixes).
"""
from __future__ import annotations

import numpy as np

from tuili.errors import ConfigError

from .blocks import SYMMETRIC_ZERO, BlockWeights, block_params, check_block_size, pad_rows, round_codes

DEFAULT_DAMP = 0.01  # fraction of the mean diagonal added to H (GPTQ's percdamp)


class HessianObserver:
    """Accumulates X^T X over the rows of the activations entering a layer (last axis = K)."""

    def __init__(self):
        self.h: np.ndarray | None = None
        self.rows = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        x = x.reshape(-1, x.shape[-1])
        if self.h is None:
            self.h = np.zeros((x.shape[1], x.shape[1]), np.float64)
        self.h += (x.T @ x).astype(np.float64)
        self.rows += x.shape[0]

    def hessian(self) -> np.ndarray:
        if self.h is None or self.rows == 0:
            raise ConfigError("GPTQ: no calibration activations reached this layer")
        return self.h / self.rows


def gptq_blocks(w: np.ndarray, hessian: np.ndarray, block_size: int, symmetric: bool = True,
                damp: float = DEFAULT_DAMP) -> BlockWeights:
    """4-bit codes of ``w`` [K, N] chosen by GPTQ with the layer's input Hessian [K, K]."""
    block_size = check_block_size(block_size)
    k, n = w.shape
    if hessian.shape != (k, k):
        raise ConfigError(f"GPTQ: Hessian of shape {hessian.shape} does not match a weight with K={k}")
    wt = pad_rows(np.asarray(w, np.float64), block_size).T.copy()  # [N, K_padded]: GPTQ walks the columns
    kp = wt.shape[1]
    h = np.zeros((kp, kp))
    h[:k, :k] = hessian
    dead = np.diag(h) == 0  # inputs that are always zero (and the padding): their weights do not matter
    h[dead, dead] = 1.0
    wt[:, dead] = 0.0
    h[np.diag_indices(kp)] += damp * float(np.mean(np.diag(h)))
    # upper Cholesky factor of H^-1: row i holds how the error of column i moves the later columns
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    nb = kp // block_size
    codes = np.empty((n, kp), np.uint8)
    scales = np.empty((nb, n), np.float32)
    zps = None if symmetric else np.empty((nb, n), np.uint8)
    for b in range(nb):
        lo, hi = b * block_size, (b + 1) * block_size
        w1 = wt[:, lo:hi].copy()
        scale, zp = block_params(w1.T, block_size, symmetric)  # [1, N] from the updated weights
        scales[b] = scale[0]
        s = scale[0].astype(np.float64)
        z = np.float64(SYMMETRIC_ZERO) if zp is None else zp[0].astype(np.float64)
        if zps is not None:
            zps[b] = zp[0]
        u1 = u[lo:hi, lo:hi]
        err = np.empty_like(w1)
        for i in range(block_size):
            col = w1[:, i]
            c = round_codes(col, s, z)
            codes[:, lo + i] = c
            e = (col - (c - z) * s) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err[:, i] = e
        wt[:, hi:] -= err @ u[lo:hi, hi:]
    return BlockWeights(np.ascontiguousarray(codes.T), scales, zps, k, block_size)


__all__ = ["DEFAULT_DAMP", "HessianObserver", "gptq_blocks"]
