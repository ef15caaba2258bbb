"""`tuili run` and `tuili ops` from the command line (in-process through tuili.cli.main)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tuili.cli import main

F = onnx.TensorProto.FLOAT


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("y", F, ["N", 3])], [w])
    path = tmp_path_factory.mktemp("cli") / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_run_random_compare(model_path, capsys):
    assert main(["run", str(model_path), "--random", "--dim", "N=3", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "y: float32[3, 3]" in out and "max |tuili - onnxruntime|" in out


def test_run_from_npy_saves_npz(model_path, tmp_path, capsys):
    x = np.ones((2, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert main(["run", str(model_path), "-i", f"x={tmp_path / 'x.npy'}", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out)["y"], x @ np.arange(12, dtype=np.float32).reshape(4, 3))


def test_run_bad_input_is_a_clear_error(model_path, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 5), np.float32))
    assert main(["run", str(model_path), "-i", f"x={tmp_path / 'x.npy'}"]) == 2
    err = capsys.readouterr().err
    assert "input 'x' has shape [2, 5]" in err and "dimension 1 must be 4" in err


def test_run_corrupt_model(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08garbage")
    assert main(["run", str(bad), "--random"]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err


def test_ops_lists_domains(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "ai.onnx (" in out and "Conv-1" in out and "ai.onnx.ml" in out
