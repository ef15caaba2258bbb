"""benchmarks/quantize.py's recognizer suite: rendered text lines, CTC decoding, character accuracy, and a
clean skip without the third-party model (the model itself is not needed here)."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quantize.py"
    spec = importlib.util.spec_from_file_location("bench_quantize", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_text_lines_are_deterministic_padded_images_with_their_labels(bench):
    x, labels = bench.text_lines(6, seed=3)
    assert x.shape == (6, 3, bench.LINE_H, bench.LINE_W) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and (x[:, :, :, -1] == 0).any()  # zero padding on the right
    assert all(4 <= len(s) <= 14 and set(s) <= set(bench.LINE_CHARS) for s in labels)
    x2, labels2 = bench.text_lines(6, seed=3)
    assert labels2 == labels and np.array_equal(x2, x)
    assert bench.text_lines(6, seed=4)[1] != labels


def test_ctc_decode_collapses_repeats_and_drops_blanks(bench):
    alphabet = ["<blank>", "a", "b", " "]
    seq = [1, 1, 0, 1, 2, 2, 0, 0, 2, 3]
    probs = np.eye(4, dtype=np.float32)[seq][None]
    assert bench.ctc_decode(probs, alphabet) == ["aabb "]  # a a | a (after a blank) | b b | b (after blanks) | space


def test_character_accuracy_counts_edits(bench):
    assert bench.edit_distance("kitten", "sitting") == 3
    assert bench.char_accuracy(["abcd", "xy"], ["abcd", "xyz"]) == pytest.approx(100 * (1 - 1 / 7))
    assert bench.char_accuracy(["", ""], ["ab", "cd"]) == 0.0


def test_recognizer_suite_skips_without_the_model(bench, tmp_path, capsys):
    args = argparse.Namespace(recognizer=str(tmp_path / "missing.onnx"))
    assert bench.bench_recognizer(args, tmp_path) is None
    assert "recognizer suite skipped" in capsys.readouterr().out
