"""Bad input: clear ConfigErrors that name the limit."""
from __future__ import annotations

import pytest

from tuili.errors import ConfigError
from tuili.zoo import count, create, example_inputs, export, get_spec, train


def test_unknown_name_lists_known_models():
    with pytest.raises(ConfigError) as e:
        get_spec("mobilenet_v9")
    msg = str(e.value)
    assert "mobilenet_v9" in msg and "resnet18" in msg and "gpt_small" in msg and "Did you mean" in msg
    with pytest.raises(ConfigError, match="Known models"):
        create("alexnet")


def test_dash_names_are_accepted():
    assert get_spec("digits-cnn").name == "digits_cnn"


def test_resolution_below_minimum_names_the_limit():
    with pytest.raises(ConfigError, match="below the model's minimum of 32"):
        create("resnet18", resolution=16)
    with pytest.raises(ConfigError, match="minimum of 64"):
        count("mobilevit_xxs", resolution=32)


def test_resolution_multiple_names_the_limit():
    with pytest.raises(ConfigError, match="multiple of 64"):
        export("mobilevit_s", "/nonexistent/x.onnx", resolution=224)


@pytest.mark.parametrize("name,width,limit", [
    ("mobilenet_v2", 3.0, r"\[0.25, 2\]"),
    ("mobilenet_v2", 0.1, r"\[0.25, 2\]"),
    ("resnet50", 0.5, "no width multiplier"),
    ("shufflenet_v2_x1_0", 0.75, "allowed widths: 0.5, 1, 1.5, 2"),
    ("ghostnet_1_0", -1, "outside the supported range"),
])
def test_invalid_width_names_the_limit(name, width, limit):
    with pytest.raises(ConfigError, match=limit):
        count(name, width=width)


def test_text_models_refuse_image_knobs():
    with pytest.raises(ConfigError, match="text model"):
        create("bert_small", resolution=224)
    with pytest.raises(ConfigError, match="no classifier"):
        create("bert_small", num_classes=3)
    with pytest.raises(ConfigError, match=r"outside \[1, 512\]"):
        example_inputs("bert_small", seq_len=1000)


def test_opset_too_old_names_the_op_and_the_opset(tmp_path):
    with pytest.raises(ConfigError) as e:
        export("bert_small", tmp_path / "b.onnx", opset=7)
    msg = str(e.value)
    assert "opset 7" in msg and "arange" in msg and "needs opset 9" in msg


def test_opset_out_of_exporter_range(tmp_path):
    with pytest.raises(ConfigError, match=r"7\.\.20"):
        export("resnet18", tmp_path / "r.onnx", opset=3)


def test_bad_batch(tmp_path):
    with pytest.raises(ConfigError, match="dynamic"):
        export("resnet18", tmp_path / "r.onnx", batch="many")


def test_training_rejects_text_models_and_unknown_data(tmp_path):
    with pytest.raises(ConfigError, match="digits"):
        train("digits_cnn", data="mnist", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="image model"):
        train("bert_small", out_dir=tmp_path, progress=False)
