"""DFT / STFT / window functions / MelWeightMatrix against onnxruntime, plus DFT round trips."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops._ortref import assert_same, run_tuili

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(
    st.integers(0, 2**31),
    st.integers(2, 9),
    st.booleans(),
    st.sampled_from([(0, 0), (1, 0), (0, 1)]),
    st.sampled_from([None, 4, 12]),
)
def test_dft_opset20(seed, n, complex_in, flags, dft_length):
    onesided, inverse = flags
    if onesided and complex_in:
        complex_in = False  # RFFT takes real input
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, n, 3, 2 if complex_in else 1)).astype(np.float32)
    axis = np.array(1, np.int64)
    length = None if dft_length is None else np.array(dft_length, np.int64)
    assert_same("DFT", [x, length, axis], 1, 20, onesided=onesided, inverse=inverse, rtol=1e-4, atol=1e-4)


def test_dft_opset17_axis_attribute_and_roundtrip():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 2)).astype(np.float32)
    assert_same("DFT", [x], 1, 17, axis=2, rtol=1e-4, atol=1e-4)
    y = run_tuili("DFT", [x], 1, 17, axis=2)[0]
    back = run_tuili("DFT", [y], 1, 17, axis=2, inverse=1)[0]
    np.testing.assert_allclose(back, x, rtol=1e-4, atol=1e-5)
    # IRFFT (opset 20): onesided inverse returns the real signal
    r = rng.standard_normal((1, 10, 1)).astype(np.float32)
    half = run_tuili("DFT", [r, None, np.array(1, np.int64)], 1, 20, onesided=1)[0]
    real = run_tuili("DFT", [half, np.array(10, np.int64), np.array(1, np.int64)], 1, 20, onesided=1, inverse=1)[0]
    np.testing.assert_allclose(real, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("onesided", [0, 1])
@pytest.mark.parametrize("window", [None, "hann"])
@pytest.mark.parametrize("step", [3, 8])
def test_stft(onesided, window, step):
    rng = np.random.default_rng(step)
    sig = rng.standard_normal((2, 40, 1)).astype(np.float32)
    w = np.hanning(16).astype(np.float32) if window else None
    flen = np.array(16, np.int64)
    inputs = [sig, np.array(step, np.int64), w, flen]
    assert_same("STFT", inputs, 1, 17, onesided=onesided, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("size", [1, 2, 10])
def test_windows(op, periodic, size):
    if size == 1 and not periodic:
        # N - 1 = 0: onnxruntime divides by zero (NaN); tuili follows numpy/scipy/torch: [1]
        assert run_tuili(op, [np.array(1, np.int64)], 1, 17, periodic=0)[0].tolist() == [1.0]
    else:
        assert_same(op, [np.array(size, np.int64)], 1, 17, periodic=periodic, rtol=1e-6, atol=1e-6)
    got = run_tuili(op, [np.array(size, np.int32)], 1, 17, periodic=periodic, output_datatype=11)[0]
    assert got.dtype == np.float64 and got.shape == (size,)


@pytest.mark.parametrize("bins,nfft,sr,lo,hi", [(8, 64, 16000, 0.0, 8000.0), (10, 256, 8000, 100.0, 3000.0), (4, 16, 1000, 10.0, 400.0)])
def test_mel_weight_matrix(bins, nfft, sr, lo, hi):
    inputs = [np.array(bins, np.int64), np.array(nfft, np.int64), np.array(sr, np.int64), np.array(lo, np.float32), np.array(hi, np.float32)]
    assert_same("MelWeightMatrix", inputs, 1, 17, rtol=1e-6, atol=1e-6)
