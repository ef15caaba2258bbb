"""Every export passes onnx.checker (full check) and onnxruntime equals torch within 1e-4.

Fast set: resnet18, mobilenet_v2, resnet50, bert_small (the engine issue's models); the rest is
marked slow. Models are exported once per session (tests/zoo/conftest.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.zoo.conftest import ort_session, torch_outputs
from tuili.zoo import example_inputs, get_spec, names

FAST = ["resnet18", "mobilenet_v2", "resnet50", "bert_small"]
SLOW = [n for n in names() if n not in FAST]


def _check(zoo_exports, name, batches=(1, 2)):
    path, model = zoo_exports.get(name)
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path), load_external_data=False)
    spec = get_spec(name)
    assert [i.name for i in m.graph.input] == list(spec.inputs)
    assert [o.name for o in m.graph.output] == list(spec.outputs)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = ort_session(path)
    for b in batches:  # the batch axis is dynamic
        feeds = example_inputs(name, b, past_len=3) if spec.task == "text-generation" else example_inputs(name, b)
        got = sess.run(None, feeds)
        want = torch_outputs(model, feeds)
        assert len(got) == len(want)
        for oname, g, w in zip(spec.outputs, got, want):
            assert g.shape == w.shape, oname
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"{name}:{oname} batch {b}")


@pytest.mark.parametrize("name", FAST)
def test_export_matches_torch(zoo_exports, name):
    _check(zoo_exports, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_export_matches_torch_slow(zoo_exports, name):
    _check(zoo_exports, name, batches=(2,))


def test_bert_small_dynamic_sequence_and_mask(zoo_exports):
    """The sequence axis is dynamic and padding is masked: padded positions do not change the rest."""
    path, model = zoo_exports.get("bert_small")
    sess = ort_session(path)
    feeds = example_inputs("bert_small", 1, seq_len=9, seed=3)
    base = sess.run(None, feeds)
    np.testing.assert_allclose(base[0], torch_outputs(model, feeds)[0], rtol=1e-4, atol=1e-4)
    padded = {k: np.concatenate([v, np.zeros((1, 4), np.int64) + (7 if k == "input_ids" else 0)], axis=1)
              for k, v in feeds.items()}
    out = sess.run(None, padded)
    np.testing.assert_allclose(out[0][:, :9], base[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[1], base[1], rtol=1e-4, atol=1e-4)


def test_fixed_batch_export(tmp_path):
    from tuili.zoo import export

    p = export("squeezenet1_1", tmp_path / "sq.onnx", batch=2, resolution=64)
    m = onnx.load(str(p))
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 64, 64]
    assert {p.key: p.value for p in m.metadata_props}["zoo.name"] == "squeezenet1_1"


def test_width_and_resolution_variant_export(tmp_path):
    from tuili.zoo import create, export

    p = export("mobilenet_v3_small", tmp_path / "m.onnx", width=0.75, resolution=96, opset=13)
    model = create("mobilenet_v3_small", width=0.75, resolution=96)
    feeds = example_inputs("mobilenet_v3_small", 2, resolution=96)
    got = ort_session(p).run(None, feeds)[0]
    np.testing.assert_allclose(got, torch_outputs(model, feeds)[0], rtol=1e-4, atol=1e-4)
    assert onnx.load(str(p)).opset_import[0].version == 13


def test_create_is_deterministic_in_seed():
    import torch

    from tuili.zoo import create

    a, b, c = create("digits_cnn", seed=1), create("digits_cnn", seed=1), create("digits_cnn", seed=2)
    x = torch.from_numpy(example_inputs("digits_cnn", 2)["input"])
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))
    assert not a.training


def test_keep_batchnorm_export(tmp_path):
    """By default BN is folded into Conv; keep_batchnorm leaves BatchNormalization for the optimizer."""
    from tuili.zoo import create, export

    folded = export("mobilenet_v1", tmp_path / "f.onnx", resolution=64)
    kept = export("mobilenet_v1", tmp_path / "k.onnx", resolution=64, keep_batchnorm=True)
    ops = lambda p: {n.op_type for n in onnx.load(str(p)).graph.node}  # noqa: E731
    assert "BatchNormalization" not in ops(folded)
    assert "BatchNormalization" in ops(kept)
    model = create("mobilenet_v1", resolution=64)
    feeds = example_inputs("mobilenet_v1", 2, resolution=64)
    want = torch_outputs(model, feeds)[0]
    for p in (folded, kept):
        np.testing.assert_allclose(ort_session(p).run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)
