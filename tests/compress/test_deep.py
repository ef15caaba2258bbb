"""Deep Compression: k-means weight sharing with trained centroids, canonical Huffman coding, the
.tdc file (round trip, version and magic checks, corruption), and the pipeline's stage table."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper
from torch import nn

from tuili import zoo
from tuili.compress.deep import MAGIC, compress, deep_compress, huffman, kmeans_1d, load, share_weights, unshare
from tuili.compress.deep.fileformat import weight_names
from tuili.compress.train import fine_tune, subset
from tuili.errors import ConfigError, ModelLoadError
from tuili.runtime.session import InferenceSession


@given(st.lists(st.integers(0, 40), min_size=1, max_size=400))
def test_huffman_round_trip(symbols):
    s = np.array(symbols)
    lengths = huffman.code_lengths(np.bincount(s, minlength=41))
    assert huffman.decode(huffman.encode(s, lengths), lengths, len(s)).tolist() == symbols


def test_huffman_is_optimal_on_a_skewed_source():
    counts = np.array([50, 25, 12, 6, 3, 2, 1, 1])
    lengths = huffman.code_lengths(counts)
    assert lengths.tolist() == [1, 2, 3, 4, 5, 6, 7, 7]
    codes = huffman.canonical_codes(lengths)
    strs = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    assert not any(a != b and b.startswith(a) for a in strs for b in strs)  # prefix-free


def test_kmeans_linear_init_finds_the_clusters():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(c, 0.01, 200) for c in (-1.0, 0.2, 3.0)])
    c, idx = kmeans_1d(v, 3)
    np.testing.assert_allclose(np.sort(c), [-1.0, 0.2, 3.0], atol=0.01)
    assert np.abs(c[idx] - v).max() < 0.1


def test_shared_weights_train_per_cluster_and_keep_zeros():
    digits = subset(zoo.digits_data("digits_cnn"), train=128, test=64)
    model = zoo.create("digits_cnn", calibrate=False)
    with torch.no_grad():
        model.fc.weight[:, :32] = 0
    clusters = share_weights(model, {"conv": 3, "fc": 2})
    assert clusters["fc"] <= 4 and clusters["features.0.0"] <= 8
    c0 = model.fc.weight_centroids.detach().clone()
    fine_tune(model, digits, 0.25, lr=1e-2, progress=False)
    assert not torch.equal(c0, model.fc.weight_centroids.detach())  # the centroids trained
    unshare(model)
    w = model.fc.weight.detach()
    assert (w[:, :32] == 0).all()
    assert len(torch.unique(w[w != 0])) <= 4
    assert isinstance(model.fc.weight, nn.Parameter)


def _model_with_shared_weights(tmp_path):
    model = zoo.create("glyphs_cnn")
    path = tmp_path / "m.onnx"
    zoo.export("glyphs_cnn", path, model=model)
    return path


def test_file_round_trip_is_exact_and_runs(tmp_path):
    src = _model_with_shared_weights(tmp_path)
    before = src.read_bytes()
    report = compress(src, tmp_path / "m.tdc", sparsity=0.8)
    assert src.read_bytes() == before  # input untouched
    assert (tmp_path / "m.tdc").read_bytes()[:8] == MAGIC
    restored = load(tmp_path / "m.tdc")
    original = onnx.load(str(src))
    names = set(weight_names(original))
    assert names and {t.name for t in report.tensors} == names
    got = {t.name: numpy_helper.to_array(t) for t in restored.graph.initializer}
    for t in original.graph.initializer:
        w = numpy_helper.to_array(t)
        if t.name in names:  # pruned to 80% and clustered: zeros where the smallest were, <= 32 values
            r = got[t.name]
            assert (r == 0).mean() == pytest.approx(0.8, abs=0.01)
            assert len(np.unique(r[r != 0])) <= 32
            assert np.abs(r - w)[r != 0].max() < 0.5 * np.abs(w).max()
        else:
            np.testing.assert_array_equal(got[t.name], w)
    assert report.ratio > 8
    x = np.random.default_rng(0).random((2, 1, 32, 32), np.float32)
    out = InferenceSession(restored.SerializeToString(), engine="tuili").run(None, {"input": x})[0]
    ref = InferenceSession(restored.SerializeToString(), engine="onnxruntime").run(None, {"input": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_already_shared_weights_are_stored_exactly(tmp_path):
    model = zoo.create("glyphs_cnn")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.round(m.weight * 8) / 8)
    path = tmp_path / "s.onnx"
    zoo.export("glyphs_cnn", path, model=model, keep_batchnorm=True)
    compress(path, tmp_path / "s.tdc")
    restored = {t.name: numpy_helper.to_array(t) for t in load(tmp_path / "s.tdc").graph.initializer}
    for t in onnx.load(str(path)).graph.initializer:
        np.testing.assert_array_equal(restored[t.name], numpy_helper.to_array(t))


def test_bad_files_are_refused(tmp_path):
    src = _model_with_shared_weights(tmp_path)
    compress(src, tmp_path / "m.tdc")
    data = (tmp_path / "m.tdc").read_bytes()
    cases = {"magic": b"NOTATDC!" + data[8:], "version": data[:8] + b"\x09\x00" + data[10:],
             "truncated": data[:len(data) // 2], "trailing": data + b"xx"}
    for name, blob in cases.items():
        (tmp_path / f"{name}.tdc").write_bytes(blob)
        with pytest.raises(ModelLoadError):
            load(tmp_path / f"{name}.tdc")
    with pytest.raises(ModelLoadError, match="version 9"):
        load(tmp_path / "version.tdc")


def test_compress_refuses_bad_sparsity_and_weightless_models(tmp_path):
    src = _model_with_shared_weights(tmp_path)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        compress(src, tmp_path / "x.tdc", sparsity=1.0)
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ConfigError, match="no float32"):
        compress(onnx.helper.make_model(g), tmp_path / "y.tdc")


def test_pipeline_reports_every_stage(tmp_path):
    digits = subset(zoo.digits_data("digits_cnn"), train=256, test=128)
    model = zoo.create("digits_cnn", calibrate=False)
    fine_tune(model, digits, 1, lr=3e-3, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = deep_compress(model, digits, tmp_path / "d.tdc", sparsity=0.8, steps=1, prune_epochs=0.25,
                           share_epochs=0.25, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s.name.split()[0] for s in result.stages] == ["baseline", "pruned", "+", "+", "+"]
    sizes = [s.bytes for s in result.stages]
    assert sizes[0] > sizes[1] > sizes[2] >= sizes[3] > sizes[4]
    assert all(s.accuracy is not None for s in result.stages)
    # the file decodes to the exported model exactly: same accuracy as the shared torch model
    assert result.stages[-1].accuracy == pytest.approx(result.stages[-2].accuracy, abs=1 / 128 + 1e-9)
    assert "smaller" in result.table() and "P+Q+H" in result.report.table()
    # BatchNorm was folded before sharing: no BatchNormalization node left
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(result.onnx_path)).graph.node)


def test_pipeline_refuses_bad_input(tmp_path):
    model = zoo.create("digits_cnn", calibrate=False)
    with pytest.raises(ConfigError, match="data"):
        deep_compress(model, None, tmp_path / "x.tdc")
    digits = subset(zoo.digits_data("digits_cnn"), train=64, test=32)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        deep_compress(model, digits, tmp_path / "x.tdc", sparsity=0)
