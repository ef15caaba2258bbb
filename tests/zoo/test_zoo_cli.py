"""`tuili zoo` verbs through the real argument parser."""
from __future__ import annotations

import onnx

from tuili.cli import main


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mobilenet_v2", "resnet50", "bert_small", "gpt_small", "digits_cnn"):
        assert name in out
    assert "11.69" in out  # resnet18 params (M), measured


def test_zoo_list_measure_only(capsys):
    assert main(["zoo", "list", "--measure", "--only", "digits_cnn", "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "ORT ms" in out and "digits_cnn" in out


def test_zoo_export(tmp_path, capsys):
    out = tmp_path / "sq.onnx"
    assert main(["zoo", "export", "squeezenet1_1", "-o", str(out), "--opset", "13", "--resolution", "64"]) == 0
    assert "wrote" in capsys.readouterr().out
    m = onnx.load(str(out))
    assert m.opset_import[0].version == 13 and m.graph.output[0].name == "logits"


def test_zoo_export_bad_input_exit_code(tmp_path, capsys):
    assert main(["zoo", "export", "resnet18", "-o", str(tmp_path / "x.onnx"), "--resolution", "8"]) == 2
    assert "minimum of 32" in capsys.readouterr().err
    assert main(["zoo", "info", "nope"]) == 2
    assert "Known models" in capsys.readouterr().err


def test_zoo_info(capsys):
    assert main(["zoo", "info", "mobilenet_v3_small"]) == 0
    out = capsys.readouterr().out
    assert "features.0.0" in out and "total" in out and "2,542,856" in out


def test_zoo_train(tmp_path, capsys):
    assert main(["zoo", "train", "digits_cnn", "--data", "digits", "--epochs", "1", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert (tmp_path / "digits_cnn.onnx").exists() and (tmp_path / "digits_cnn.pt").exists()
