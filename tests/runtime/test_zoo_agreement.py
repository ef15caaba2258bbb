"""Every zoo model runs in tuili's engine and agrees with onnxruntime on the same inputs."""
from __future__ import annotations

import numpy as np
import pytest

import tuili
from tuili import zoo

MODELS = [spec.name for spec in zoo.list_models()]


@pytest.mark.parametrize("name", MODELS)
def test_tuili_agrees_with_onnxruntime(name, zoo_onnx):
    path = zoo_onnx(name)
    feeds = zoo.example_inputs(name, batch=2)
    ours = tuili.InferenceSession(path).run(None, feeds)
    ref = tuili.InferenceSession(path, engine="onnxruntime").run(None, feeds)
    assert len(ours) == len(ref)
    for got, want in zip(ours, ref):
        assert got.dtype == want.dtype and got.shape == want.shape
        if got.dtype == np.float32:
            # within 1e-4, absolute or relative, element by element
            err = np.abs(got - want)
            ok = (err <= 1e-4) | (err <= 1e-4 * np.abs(want))
            assert ok.all(), f"{name}: max abs error {err.max():.3g}"
        else:
            np.testing.assert_array_equal(got, want)
