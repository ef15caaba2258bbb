"""glyphs_cnn / resnet8_glyphs: trained on the glyphs set (tuili.data.glyphs) through zoo.train."""
from __future__ import annotations

import numpy as np
import pytest

from tests.zoo.conftest import ort_session
from tuili.errors import ConfigError


@pytest.fixture(scope="module")
def small_glyphs(tmp_path_factory):
    """glyphs_cnn's view of a small, mildly jittered glyph set (6 samples per face and character), in a
    private cache: the full jitter needs ~500 steps before the loss leaves ln(62), too long for make test."""
    from tuili.zoo import glyphs_data

    return glyphs_data("glyphs_cnn", per_glyph=6, jitter=0.25, cache_dir=tmp_path_factory.mktemp("cache"))


def test_glyph_models_take_the_data_as_generated(small_glyphs):
    from tuili.zoo import get_spec

    assert small_glyphs.x_train.shape[1:] == (1, 32, 32) and small_glyphs.num_classes == 62
    assert 0.0 <= small_glyphs.x_test.min() and small_glyphs.x_test.max() <= 1.0
    for name in ("glyphs_cnn", "resnet8_glyphs"):
        spec = get_spec(name)
        assert spec.dataset == "glyphs" and spec.num_classes == 62 and spec.inputs["input"][1] == 1


def test_other_cnns_get_glyphs_scaled_and_repeated(tmp_path):
    from tuili.zoo import glyphs_data

    ds = glyphs_data("mobilenet_v2", per_glyph=1, cache_dir=tmp_path)
    assert ds.x_train.shape[1:] == (3, 32, 32) and ds.channels == 3
    assert -1.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.min() < -0.5


def test_glyphs_cnn_learns_in_a_few_hundred_steps(small_glyphs, tmp_path):
    from tuili.zoo import train

    r = train("glyphs_cnn", data=small_glyphs, epochs=2, batch_size=32, width=0.5, out_dir=tmp_path, progress=False)
    assert r.data == "glyphs" and r.epochs == 2 and len(r.history) == 2
    assert all("val_acc" in row and "test_acc" not in row for row in r.history)  # test is never watched
    assert r.val_accuracy == r.history[-1]["val_acc"]
    assert r.accuracy > 0.12, r.history  # chance is 1/62 = 1.6%
    logits = ort_session(r.onnx_path).run(["logits"], {"input": small_glyphs.x_test})[0]
    assert float((logits.argmax(1) == small_glyphs.y_test).mean()) == pytest.approx(r.accuracy, abs=1e-9)


def test_prepared_data_rejects_a_resolution(small_glyphs, tmp_path):
    from tuili.zoo import train

    with pytest.raises(ConfigError, match="resolution=16"):
        train("glyphs_cnn", data=small_glyphs, resolution=16, out_dir=tmp_path, progress=False)


@pytest.mark.slow
def test_zoo_train_glyphs_cnn_prints_test_accuracy(tmp_path, capsys, monkeypatch):
    """The documented run: `tuili zoo train glyphs_cnn` (default set, 8 epochs) lands well below 100%."""
    from tuili.cli import main

    monkeypatch.setenv("TUILI_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["zoo", "train", "glyphs_cnn", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "glyphs_cnn: test accuracy" in out and "on glyphs" in out
    acc = float(out.split("test accuracy ")[1].split("%")[0])
    assert 80.0 < acc < 97.0, out
    assert (tmp_path / "glyphs_cnn.onnx").exists()


@pytest.mark.slow
def test_resnet8_glyphs_trains(tmp_path, monkeypatch):
    from tuili.zoo import train

    monkeypatch.setenv("TUILI_CACHE_DIR", str(tmp_path / "cache"))
    r = train("resnet8_glyphs", out_dir=tmp_path, progress=False)
    assert 0.8 < r.accuracy < 0.99, r.history
    assert np.isfinite(r.history[-1]["loss"])
