"""Every zoo model runs in tuili's engine and agrees with onnxruntime on the same inputs."""
from __future__ import annotations

import numpy as np
import pytest

import tuili

FAST = ["resnet18", "resnet50", "mobilenet_v2", "bert_small"]


def _all_models() -> list[str]:
    from tuili import zoo

    return [spec.name for spec in zoo.list_models()]


def _params():
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in _all_models()]


@pytest.mark.parametrize("name", _params())
def test_tuili_agrees_with_onnxruntime(name, zoo_onnx):
    from tuili import zoo

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
