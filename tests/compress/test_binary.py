"""Binarization: STE layers, binarize(), the two ONNX forms agree in onnxruntime and tuili."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tuili
from tuili.compress.binary import binarize, binarize_zoo, sign_ste, to_binary_ops
from tuili.compress.binary.layers import BinaryConv2d, deployable
from tuili.compress.distill import subset
from tuili.errors import ConfigError
from tuili.zoo.core import create
from tuili.zoo.training import digits_data


def _cnn():
    return create("digits_cnn", width=0.5, calibrate=False)


def test_sign_ste_forward_and_clipped_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_binarize_keeps_first_conv_and_classifier_float_and_leaves_input_alone():
    model = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bmodel, layers = binarize(model)
    assert layers == ["features.1.0", "features.3.0", "features.4.0"]
    assert isinstance(bmodel.features[0][0], torch.nn.Conv2d) and isinstance(bmodel.fc, torch.nn.Linear)
    assert all(isinstance(bmodel.get_submodule(n), BinaryConv2d) for n in layers)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, BinaryConv2d) for m in model.modules())


def test_binarize_refuses_bad_input():
    frozen = _cnn()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable weights"):
        binarize(frozen)
    with pytest.raises(ConfigError, match="exclude names no Conv2d"):
        binarize(_cnn(), exclude=("fc.nope",))
    with pytest.raises(ConfigError, match="no convolution left"):
        binarize(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)))


def test_weights_are_alpha_times_signs_and_deployable_matches():
    torch.manual_seed(0)
    bmodel, _ = binarize(_cnn())
    bmodel.eval()
    layer = bmodel.features[1][0]
    from tuili.compress.binary.layers import binary_weight

    with torch.no_grad():
        w = binary_weight(layer.weight)
    mags = w.abs().flatten(1)
    assert torch.allclose(mags, layer.weight.abs().mean((1, 2, 3))[:, None].expand_as(mags))
    x = torch.rand(3, 1, 8, 8) * 16
    with torch.no_grad():
        assert torch.allclose(deployable(bmodel)(x), bmodel(x), atol=1e-5)


def test_binarize_zoo_two_forms_agree_across_engines(tmp_path):
    data = subset(digits_data(), train=256, test=96)
    run = binarize_zoo("digits_cnn", width=0.5, data=data, epochs=1, out_dir=tmp_path, progress=False)
    ops = [n.op_type for n in onnx.load(str(run.tuili_onnx)).graph.node]
    assert ops.count("BinaryConv") == 3 and "Sign" not in ops
    assert [n.op_type for n in onnx.load(str(run.onnx_path)).graph.node].count("Sign") == 3
    x = data.x_test[:32]
    std = ort.InferenceSession(str(run.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    packed = tuili.InferenceSession(str(run.tuili_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(packed, std, rtol=1e-4, atol=1e-4)
    assert run.tuili_onnx.stat().st_size < run.onnx_path.stat().st_size
    with pytest.raises(ConfigError, match="is the input model"):
        to_binary_ops(run.onnx_path, run.onnx_path)
