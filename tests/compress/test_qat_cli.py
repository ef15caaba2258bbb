"""`tuili qat`: a trained zoo checkpoint fine-tuned with QAT for a fraction of an epoch, reported beside fp32/PTQ."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tuili.cli import main
from tuili.compress.quant.qatrun import qat_zoo


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tuili import zoo

    out = tmp_path_factory.mktemp("qat_cli")
    return zoo.train("digits_cnn", epochs=1, out_dir=out, progress=False).checkpoint


def test_qat_verb_writes_qdq_and_reports_three_accuracies(checkpoint, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    before = checkpoint.read_bytes()
    assert main(["qat", str(checkpoint), "-o", str(out), "--epochs", "0.25", "--calib-samples", "64", "--bits", "4"]) == 0
    text = capsys.readouterr().out
    for k in ("fp32", "PTQ", "QAT"):
        assert f"  {k} " in text
    assert "W/A bits 4/8" in text and "test split (450 samples" in text
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert checkpoint.read_bytes() == before


def test_qat_zoo_result_matches_the_written_model(checkpoint, tmp_path):
    from tuili.compress.quant.qatrun import load_trained, onnx_top1

    run = qat_zoo(str(checkpoint), tmp_path / "q.onnx", epochs=0.1, calib_samples=32, samples=256, progress=False)
    _, data, _ = load_trained(str(checkpoint))
    assert run.top1["QAT"] == pytest.approx(onnx_top1(run.output, data.x_test, data.y_test))
    assert set(run.top1) == set(run.size) == {"fp32", "PTQ", "QAT"}
    assert run.size["QAT"] < run.size["fp32"] and np.isfinite(run.top1["PTQ"])


def test_zoo_name_trains_first_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUILI_CACHE_DIR", str(tmp_path / "cache"))
    run = qat_zoo("digits_cnn", tmp_path / "q.onnx", epochs=0.1, calib_samples=16, samples=128, train_epochs=1,
                  progress=False)
    assert (tmp_path / "cache" / "qat" / "digits_cnn.pt").is_file() and run.output.is_file()


@pytest.mark.parametrize("argv, match", [
    (["--epochs", "0"], "--epochs 0"),
    (["--bits", "9"], "weight_bits=9"),
    (["--bits", "8", "--int4-storage"], "--int4-storage"),
    (["--calib-samples", "0"], "--calib-samples 0"),
])
def test_bad_options_are_errors_naming_them(checkpoint, tmp_path, capsys, argv, match):
    assert main(["qat", str(checkpoint), "-o", str(tmp_path / "q.onnx"), *argv]) == 2
    assert match in capsys.readouterr().err


def test_non_classifier_zoo_name_is_refused(tmp_path, capsys):
    assert main(["qat", "bert_small", "-o", str(tmp_path / "q.onnx")]) == 2
    assert "digits/glyphs classifier" in capsys.readouterr().err


def test_train_epochs_with_a_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    assert main(["qat", str(checkpoint), "-o", str(tmp_path / "q.onnx"), "--train-epochs", "1"]) == 2
    assert "--train-epochs" in capsys.readouterr().err
