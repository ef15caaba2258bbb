"""A zoo model exported with its BatchNormalization nodes kept: O2 folds and fuses all of them and
still agrees with onnxruntime on the unoptimized file."""
from __future__ import annotations

import numpy as np
import pytest

import tuili


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_model_with_batchnorm(name, tmp_path):
    from tuili import zoo

    path = zoo.export(name, tmp_path / f"{name}.onnx", keep_batchnorm=True)
    feeds = zoo.example_inputs(name, batch=2)
    sess = tuili.InferenceSession(path)  # opt_level=2
    after = sess.optimization_report.after
    assert "BatchNormalization" not in after and "Identity" not in after
    assert after["tuili::FusedConv"] > 0
    got = sess.run(None, feeds)
    want = tuili.InferenceSession(path, engine="onnxruntime").run(None, feeds)
    for a, b in zip(got, want):
        err = np.abs(a - b)
        assert ((err <= 1e-4) | (err <= 1e-4 * np.abs(b))).all(), f"max abs error {err.max():.3g}"
