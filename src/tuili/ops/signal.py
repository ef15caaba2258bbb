"""Signal family: DFT (opset 17 axis attribute, opset 20 axis input), STFT,
HannWindow, HammingWindow, BlackmanWindow, MelWeightMatrix.

Complex tensors use ONNX's convention: a trailing dimension of 2 (real, imag);
real signals have a trailing dimension of 1.
"""
from __future__ import annotations

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register

_ONNX_FLOAT = {1: np.float32, 10: np.float16, 11: np.float64, 2: np.uint8, 3: np.int8, 4: np.uint16,
               5: np.int16, 6: np.int32, 7: np.int64, 12: np.uint32, 13: np.uint64}


def _out_dtype(output_datatype: int, op: str):
    if output_datatype == 16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if output_datatype not in _ONNX_FLOAT:
        raise KernelError(f"{op}: unsupported output_datatype {output_datatype}")
    return np.dtype(_ONNX_FLOAT[output_datatype])


def _to_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] -> real [...]; [..., 2] -> complex [...] (complex64 unless float64)."""
    if x.shape[-1] == 1:
        return x[..., 0]
    if x.shape[-1] == 2:
        ft = np.float64 if x.dtype == np.float64 else np.float32
        return x[..., 0].astype(ft) + 1j * x[..., 1].astype(ft)
    raise KernelError(f"DFT: last dimension must be 1 (real) or 2 (complex), got shape {x.shape}")


def _from_complex(y: np.ndarray, dtype) -> np.ndarray:
    return np.stack((y.real, y.imag), axis=-1).astype(dtype, copy=False)


def _dft(x, dft_length, axis, inverse, onesided, op="DFT"):
    dt = x.dtype
    r = x.ndim
    if not (-r <= axis <= r - 2) or axis == -1:
        raise KernelError(f"{op}: axis {axis} invalid for input of rank {r} (the last dimension holds real/imag)")
    ax = axis % r
    real_in = x.shape[-1] == 1
    sig = _to_complex(x)
    n_in = sig.shape[ax]
    if onesided and inverse:
        if real_in:
            raise KernelError(f"{op}: onesided inverse DFT (IRFFT) needs complex input, got shape {x.shape}")
        n = int(dft_length) if dft_length is not None else 2 * (n_in - 1)
        y = np.fft.irfft(sig, n=n, axis=ax)
        return y[..., None].astype(dt, copy=False)
    n = int(dft_length) if dft_length is not None else n_in
    if onesided:
        if not real_in:
            raise KernelError(f"{op}: onesided forward DFT needs real input (last dimension 1), got shape {x.shape}")
        y = np.fft.rfft(sig, n=n, axis=ax)
    elif inverse:
        y = np.fft.ifft(sig, n=n, axis=ax)
    else:
        y = np.fft.fft(sig, n=n, axis=ax)
    return _from_complex(y, dt)


@register("DFT", since=17)
def dft_17(x, dft_length=None, *, axis=1, inverse=0, onesided=0):
    n = None if dft_length is None else int(np.asarray(dft_length))
    return _dft(x, n, axis, inverse, onesided)


@register("DFT", since=20)
def dft_20(x, dft_length=None, axis=None, *, inverse=0, onesided=0):
    n = None if dft_length is None else int(np.asarray(dft_length))
    ax = -2 if axis is None else int(np.asarray(axis))
    return _dft(x, n, ax, inverse, onesided)


@register("STFT", since=17)
def stft(signal, frame_step, window=None, frame_length=None, *, onesided=1):
    dt = signal.dtype
    if signal.ndim != 3 or signal.shape[-1] not in (1, 2):
        raise KernelError(f"STFT: signal must be [batch, length, 1|2], got shape {signal.shape}")
    step = int(np.asarray(frame_step))
    length = signal.shape[1]
    if frame_length is not None:
        flen = int(np.asarray(frame_length))
        if window is not None and window.shape[0] != flen:
            raise KernelError(f"STFT: window length {window.shape[0]} != frame_length {flen}")
    elif window is not None:
        flen = window.shape[0]
    else:
        flen = length
    if step <= 0 or flen <= 0 or flen > length:
        raise KernelError(f"STFT: need 0 < frame_length ({flen}) <= signal length ({length}) and frame_step ({step}) > 0")
    frames = (length - flen) // step + 1
    starts = np.arange(frames) * step
    idx = starts[:, None] + np.arange(flen)[None, :]  # (F, L)
    sig = _to_complex(signal)  # (B, N) real or complex
    fr = sig[:, idx]  # (B, F, L)
    if window is not None:
        w = window if window.ndim == 1 else _to_complex(window)
        fr = fr * w
    if onesided and signal.shape[-1] == 1 and (window is None or window.ndim == 1):
        y = np.fft.rfft(fr, axis=-1)
    else:
        y = np.fft.fft(fr, axis=-1)
    return _from_complex(y, dt)


def _window(size, periodic, output_datatype, coeffs, op):
    """Generalized cosine window sum_m c_m cos(2 pi m n / N), N = size (periodic) or size - 1."""
    n = int(np.asarray(size))
    if n < 0:
        raise KernelError(f"{op}: size must be >= 0, got {n}")
    dt = _out_dtype(output_datatype, op)
    denom = n if periodic else n - 1
    if denom == 0:  # a one-point symmetric window is [1] (numpy/scipy/torch convention)
        return np.ones(n, dtype=dt)
    k = np.arange(n, dtype=np.float64)
    w = np.full(n, coeffs[0], dtype=np.float64)
    for m, c in enumerate(coeffs[1:], start=1):
        w += c * np.cos(2 * np.pi * m * k / denom)
    return w.astype(dt)


@register("HannWindow", since=17)
def hann_window(size, *, output_datatype=1, periodic=1):
    return _window(size, periodic, output_datatype, (0.5, -0.5), "HannWindow")


@register("HammingWindow", since=17)
def hamming_window(size, *, output_datatype=1, periodic=1):
    a0 = 25.0 / 46.0
    return _window(size, periodic, output_datatype, (a0, -(1 - a0)), "HammingWindow")


@register("BlackmanWindow", since=17)
def blackman_window(size, *, output_datatype=1, periodic=1):
    return _window(size, periodic, output_datatype, (0.42, -0.5, 0.08), "BlackmanWindow")


@register("MelWeightMatrix", since=17)
def mel_weight_matrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *, output_datatype=1):
    nmel = int(np.asarray(num_mel_bins))
    nfft = int(np.asarray(dft_length))
    sr = int(np.asarray(sample_rate))
    lo = float(np.asarray(lower_edge_hertz))
    hi = float(np.asarray(upper_edge_hertz))
    if nmel <= 0 or nfft <= 0 or sr <= 0 or not 0 <= lo < hi:
        raise KernelError(f"MelWeightMatrix: bad arguments num_mel_bins={nmel}, dft_length={nfft}, sample_rate={sr}, edges=({lo}, {hi})")
    nbins = nfft // 2 + 1
    mel_lo = 2595.0 * np.log1p(lo / 700.0) / np.log(10.0)
    mel_hi = 2595.0 * np.log1p(hi / 700.0) / np.log(10.0)
    pts = np.arange(nmel + 2, dtype=np.float64)
    step = (mel_hi - mel_lo) / (nmel + 2)
    hz = 700.0 * np.expm1((pts * step + mel_lo) / 2595.0 * np.log(10.0))
    edges = np.floor((nfft + 1) * hz / sr).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]  # each (nmel,)
    j = np.arange(nbins)[:, None]  # (nbins, 1)
    up_w = np.maximum(center - left, 1)
    down_w = np.maximum(right - center, 1)
    rising = np.where((j >= left) & (j <= center), (j - left) / up_w, 0.0)
    rising = np.where((center == left) & (j == center), 1.0, rising)
    falling = np.where((j >= center) & (j < right) & (right > center), (right - j) / down_w, 0.0)
    out = np.where((j >= center) & (right > center), falling, rising)
    return out.astype(_out_dtype(output_datatype, "MelWeightMatrix"))
