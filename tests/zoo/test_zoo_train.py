"""Trainable, not just countable: digits_cnn on scikit-learn digits (fixed split, fixed seed)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.zoo.conftest import ort_session


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tuili.zoo import train

    return train("digits_cnn", data="digits", epochs=4, out_dir=tmp_path_factory.mktemp("digits"), seed=0, progress=False)


def test_digits_cnn_reaches_95_percent(trained):
    assert trained.accuracy >= 0.95, trained.history
    assert len(trained.history) == 4 and trained.history[-1]["test_acc"] == trained.accuracy
    assert trained.checkpoint.exists() and trained.onnx_path.exists()


def test_onnx_export_of_trained_model_has_same_accuracy(trained):
    from tuili.zoo import digits_data

    ds = digits_data("digits_cnn")
    assert ds.x_test.shape == (450, 1, 8, 8) and ds.x_test.max() == 16.0  # raw pixel values, fixed 25% split
    logits = ort_session(trained.onnx_path).run(["logits"], {"input": ds.x_test})[0]
    acc = float((logits.argmax(1) == ds.y_test).mean())
    assert acc == pytest.approx(trained.accuracy, abs=1e-9)


def test_checkpoint_reloads(trained):
    from tuili.zoo import digits_data, evaluate, load_checkpoint

    model = load_checkpoint(trained.checkpoint)
    ds = digits_data("digits_cnn")
    assert evaluate(model, ds.x_test, ds.y_test) == pytest.approx(trained.accuracy)


def test_digits_data_for_bigger_models_is_upsampled():
    from tuili.zoo import digits_data

    ds = digits_data("mobilenet_v2")
    assert ds.x_train.shape[1:] == (3, 32, 32) and ds.resolution == 32
    assert -1.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert np.bincount(ds.y_test).min() >= 43  # stratified (the smallest class has 174 images)


@pytest.mark.slow
def test_resnet18_learns_upsampled_digits(tmp_path):
    from tuili.zoo import train

    r = train("resnet18", epochs=6, lr=2e-3, out_dir=tmp_path, progress=False)
    assert r.resolution == 32
    assert r.accuracy >= 0.95, r.history
