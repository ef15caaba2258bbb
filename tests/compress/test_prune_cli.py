"""`tuili prune` and `tuili deep-compress`: outputs written, summaries printed, wrong options named."""
from __future__ import annotations

import onnx
import pytest

from tuili.cli import main


def test_prune_unstructured_and_structured(tmp_path, capsys):
    assert main(["prune", "glyphs_cnn", "-o", str(tmp_path / "u.onnx"), "--sparsity", "0.6"]) == 0
    assert "60.0% of" in capsys.readouterr().out
    assert main(["prune", "resnet8_glyphs", "-o", str(tmp_path / "s.onnx"), "--structured", "--flops", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "structured pruning (l1)" in out and "wrote" in out
    onnx.checker.check_model(str(tmp_path / "s.onnx"))


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "1.5"], "(0, 1)"),
    (["--sparsity", "0.5", "--flops", "0.5"], "--flops"),
    (["--structured"], "exactly one of"),
    (["--sparsity", "0.5", "--epochs", "1"], "training data"),
    (["--structured", "--sparsity", "0.5", "--schedule", "gradual"], "--schedule"),
])
def test_prune_refuses_bad_options(tmp_path, capsys, argv, message):
    assert main(["prune", "glyphs_cnn", "-o", str(tmp_path / "x.onnx"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_deep_compress_onnx_and_back(tmp_path, capsys, zoo_onnx):
    src = zoo_onnx("glyphs_cnn")
    tdc, back = tmp_path / "g.tdc", tmp_path / "g.onnx"
    assert main(["deep-compress", str(src), "-o", str(tdc), "--sparsity", "0.9"]) == 0
    assert "smaller" in capsys.readouterr().out
    assert main(["deep-compress", str(tdc), "-o", str(back), "--decompress"]) == 0
    onnx.checker.check_model(str(back))
    assert main(["deep-compress", str(src), "-o", str(tdc), "--epochs", "1"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["deep-compress", str(src), "-o", str(tdc), "--conv-bits", "9"]) == 2
    assert main(["deep-compress", str(src), "-o", str(back), "--decompress"]) == 2
    assert "not a tuili Deep Compression file" in capsys.readouterr().err
