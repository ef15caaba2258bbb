"""Pruning: unstructured magnitude masks and schedules, structured channel pruning over the fx
channel graph (the pruned module, its ONNX export in onnxruntime and tuili agree), bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tuili import zoo
from tuili.compress.prune import cubic_schedule, magnitude_masks, prune_channels, prune_unstructured, storage_bytes
from tuili.compress.prune.graph import trace
from tuili.compress.prune.unstructured import prunable_layers
from tuili.compress.train import accuracy, export_onnx, fine_tune, subset
from tuili.errors import ConfigError, UnsupportedModelError
from tuili.runtime.session import InferenceSession


@pytest.fixture(scope="module")
def digits():
    return subset(zoo.digits_data("digits_cnn"), train=256, test=128)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _conv_linear_weights(model):
    return [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_oneshot_reaches_the_sparsity_and_leaves_the_input_alone(scope):
    model = zoo.create("glyphs_cnn")
    before = _state(model)
    result = prune_unstructured(model, 0.7, scope=scope, dense_first=False, progress=False)
    assert _same_state(before, _state(model))
    ws = _conv_linear_weights(result.model)
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert zeros == pytest.approx(0.7, abs=1e-3)
    assert result.sparsity == pytest.approx(zeros)
    if scope == "layer":
        assert all(r.sparsity == pytest.approx(0.7, abs=0.01) for r in result.layers)
    else:  # global: thresholds differ per layer
        assert len({round(r.sparsity, 2) for r in result.layers}) > 1
    # no pruning re-parametrization left behind
    assert not any(hasattr(m, "weight_orig") for m in result.model.modules())


def test_first_layer_stays_dense_by_default():
    model = zoo.create("glyphs_cnn")
    result = prune_unstructured(model, 0.5, progress=False)
    assert "features.0.0" not in {r.name for r in result.layers}
    assert bool((result.model.features[0][0].weight != 0).all())
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)


def test_masks_remove_the_smallest_weights():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, -5.0, 0.3, 2.0], [-0.2, 0.05, 4.0, -1.0]]))
    masks = magnitude_masks({"l": lin}, 0.5, "global")
    assert masks["l"].tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]


def test_cubic_schedule_rises_fast_then_slowly():
    s = cubic_schedule(0.9, 4)
    assert s[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(s, s[1:]))
    assert s[0] - 0 > s[-1] - s[-2]  # the first step prunes most


def test_gradual_keeps_masks_through_fine_tuning_and_exports_zeros(digits, tmp_path):
    model = zoo.create("digits_cnn", calibrate=False)
    result = prune_unstructured(model, 0.8, schedule="gradual", steps=2, data=digits, epochs=0.5, dense_first=False,
                                progress=False)
    assert result.schedule == pytest.approx(cubic_schedule(0.8, 2))
    assert result.sparsity == pytest.approx(0.8, abs=1e-3)  # fine-tuning did not revive pruned weights
    assert len(result.history) == 1  # one training run (0.5 + 0.5 epochs): masks tighten while it trains
    import onnx
    from onnx import numpy_helper

    path = export_onnx(result.model, tmp_path / "p.onnx", torch.from_numpy(digits.x_test[:2]))
    m = onnx.load(str(path))
    convs = {n.input[1] for n in m.graph.node if n.op_type in ("Conv", "Gemm")}
    ws = [numpy_helper.to_array(t) for t in m.graph.initializer if t.name in convs]
    # BN is folded into the convs on export: a zero weight stays zero
    assert sum((w == 0).sum() for w in ws) / sum(w.size for w in ws) == pytest.approx(0.8, abs=1e-3)
    s = result.storage()
    assert s["csr"] < s["dense"] and s["bitmask"] < s["dense"]


def test_storage_bytes_counts_csr_and_bitmask():
    w = np.zeros((4, 8), np.float32)
    w[0, 1] = w[3, 7] = 1.0
    assert storage_bytes(w) == {"dense": 128, "csr": 2 * 8 + 5 * 4, "bitmask": 4 + 8}


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "x"])
def test_sparsity_outside_0_1_is_refused(bad):
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        prune_unstructured(zoo.create("glyphs_cnn"), bad)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        prune_channels(zoo.create("glyphs_cnn"), torch.randn(2, 1, 32, 32), ratio=bad)


def test_a_model_without_trainable_weights_is_refused():
    frozen = zoo.create("glyphs_cnn").requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable weights"):
        prune_unstructured(frozen, 0.5)
    with pytest.raises(ConfigError, match="no trainable weights"):
        prune_channels(nn.Sequential(nn.ReLU()), torch.randn(2, 3), ratio=0.5)


def test_fine_tuning_needs_data():
    with pytest.raises(ConfigError, match="data"):
        prune_unstructured(zoo.create("glyphs_cnn"), 0.5, epochs=1)


def test_exclude_must_name_layers():
    with pytest.raises(ConfigError, match="nope"):
        prunable_layers(zoo.create("glyphs_cnn"), exclude=["nope"])


# ------------------------------------------------------------------------------------------- structured


def _check_engines(result, example, tmp_path, rtol=1e-4):
    with torch.no_grad():
        ref = result.model(example).numpy()
    path = export_onnx(result.model, tmp_path / "s.onnx", example)
    for engine in ("onnxruntime", "tuili"):
        out = InferenceSession(str(path), engine=engine).run(None, {"input": example.numpy()})[0]
        np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * np.abs(ref).max(), err_msg=engine)
    return path


@pytest.mark.parametrize("name", ["glyphs_cnn", "resnet8_glyphs"])
@pytest.mark.parametrize("criterion", ["l1", "l2", "bn"])
def test_structured_is_smaller_and_runs_in_both_engines(name, criterion, tmp_path):
    model = zoo.create(name)
    before = _state(model)
    x = torch.randn(3, 1, 32, 32)
    result = prune_channels(model, x, ratio=0.5, criterion=criterion)
    assert _same_state(before, _state(model))
    assert result.params[1] < 0.6 * result.params[0] and result.flops[1] < 0.6 * result.flops[0]
    assert result.unsupported == []
    _check_engines(result, x, tmp_path)


def test_residual_adds_are_pruned_together():
    model = zoo.create("resnet8_glyphs")
    result = prune_channels(model, torch.randn(2, 1, 32, 32), ratio=0.5)
    pruned = result.model
    for stage in pruned.modules():
        if hasattr(stage, "shortcut") and hasattr(stage, "conv2"):
            out = stage.conv2[0].out_channels
            sc = stage.shortcut[0].out_channels if isinstance(stage.shortcut, nn.Sequential) else stage.conv1[0].in_channels
            assert out == sc  # both sides of the Add keep the same channels
    assert pruned.fc.out_features == 62  # the logits are never pruned


def test_depthwise_convs_shrink_with_their_producer(tmp_path):
    model = zoo.create("mobilenet_v2", width=0.35, resolution=32)
    x = torch.randn(2, 3, 32, 32)
    result = prune_channels(model, x, ratio=0.4)
    dw = [m for m in result.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert any(result.channels.get(n, (0, 0))[1] < result.channels.get(n, (0, 0))[0] for n in result.channels)
    _check_engines(result, x, tmp_path)


def test_flops_target_is_met():
    x = torch.randn(2, 1, 32, 32)
    result = prune_channels(zoo.create("glyphs_cnn"), x, flops_target=0.5)
    assert result.flops[1] <= 0.5 * result.flops[0]
    assert result.flops[1] > 0.35 * result.flops[0]  # the bisection does not overshoot far


class _Mixed(nn.Module):
    """conv -> cat(conv branch, conv branch) -> grouped conv -> flatten (spatial > 1) -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.grouped = nn.Conv2d(10, 10, 3, padding=1, groups=2)
        self.mid = nn.Conv2d(10, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.bn(torch.cat([self.a(x), self.b(x)], 1))
        y = self.grouped(y)
        return self.fc(torch.flatten(torch.relu(self.mid(y)), 1))


def test_concat_flatten_and_unsupported_layers(tmp_path):
    model = _Mixed().eval()
    x = torch.randn(2, 3, 8, 8)
    result = prune_channels(model, x, ratio=0.5)
    assert any("grouped Conv grouped" in u for u in result.unsupported)
    assert result.model.grouped.in_channels == 10  # left intact, and so are the channels feeding it
    assert result.model.a.out_channels == 6 and result.model.b.out_channels == 4
    assert result.model.stem.out_channels == 4  # stem feeds a and b only
    assert result.model.mid.out_channels == 6
    assert result.model.fc.in_features == 6 * 16  # flatten: each channel's 16 features went with it
    _check_engines(result, x, tmp_path)


def test_concat_is_pruned_per_input():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(12)
            self.c = nn.Conv2d(12, 5, 1)

        def forward(self, x):
            return self.c(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))

    x = torch.randn(2, 3, 4, 4)
    result = prune_channels(Cat().eval(), x, ratio=0.5)
    m = result.model
    assert (m.a.out_channels, m.b.out_channels) == (4, 2)
    assert m.bn.num_features == m.c.in_channels == 6
    with torch.no_grad():
        assert m(x).shape == (2, 5, 4, 4)


def test_untraceable_model_is_refused_clearly():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedModelError, match="torch.fx cannot trace"):
        prune_channels(Branchy(), torch.randn(1, 3, 4, 4), ratio=0.5)


def test_taylor_needs_data_and_uses_it(digits):
    model = zoo.create("digits_cnn", calibrate=False)
    x = torch.from_numpy(digits.x_test[:2])
    with pytest.raises(ConfigError, match="taylor"):
        prune_channels(model, x, ratio=0.5, criterion="taylor")
    result = prune_channels(model, x, ratio=0.5, criterion="taylor", data=digits)
    assert result.params[1] < result.params[0]


def test_network_slimming_regularizer_shrinks_gammas(digits):
    from tuili.compress.prune import bn_l1_regularizer

    model = zoo.create("digits_cnn", calibrate=False)
    g0 = sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    fine_tune(model, digits, 1, lr=1e-2, regularizer=bn_l1_regularizer(1e-1), progress=False)
    g1 = sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert g1 < g0


def test_structured_fine_tune_recovers():
    """A trained model (not one near chance, where the comparison is noise) loses most of its accuracy
    to 50% of its channels and regains much of it in one epoch of fine-tuning (measured: 94% ->
    18% -> 83%)."""
    data = zoo.digits_data("digits_cnn")
    model = zoo.create("digits_cnn", calibrate=False)
    fine_tune(model, data, 3, lr=3e-3, progress=False)
    x = torch.from_numpy(data.x_test[:2])
    pruned = prune_channels(model, x, ratio=0.5)
    tuned = prune_channels(model, x, ratio=0.5, data=data, epochs=1, lr=3e-3)
    assert len(tuned.history) == 1
    assert accuracy(model, data) > 0.8
    assert accuracy(tuned.model, data) > accuracy(pruned.model, data) + 0.2


def test_channel_graph_blocks_inputs_and_logits():
    g = trace(zoo.create("glyphs_cnn"), torch.randn(2, 1, 32, 32))
    names = {n for prods in g.groups().values() for n, _ in prods}
    assert "fc" not in names  # logits are the model's output
    assert names == {f"features.{i}.0" for i in (0, 1, 3, 4, 6)}


def test_gradual_tightens_masks_during_one_training_run(digits):
    model = zoo.create("digits_cnn", calibrate=False)
    seen = []
    import tuili.compress.prune.unstructured as unstructured

    real = unstructured.magnitude_masks

    def spy(layers, sparsity, scope="global"):
        seen.append(sparsity)
        return real(layers, sparsity, scope)

    unstructured.magnitude_masks = spy
    try:
        result = prune_unstructured(model, 0.8, schedule="gradual", steps=6, data=digits, epochs=2, final_epochs=0.25,
                                    dense_first=False, progress=False)
    finally:
        unstructured.magnitude_masks = real
    assert seen[:6] == pytest.approx(cubic_schedule(0.8, 6))  # each step's target, in order, while training
    assert result.sparsity == pytest.approx(0.8, abs=1e-3)


def test_recalibrate_batchnorm_sets_statistics_of_the_data():
    from tuili.compress.train import recalibrate_batchnorm
    from tuili.zoo.training import TrainData

    x = np.random.default_rng(0).normal(3.0, 2.0, (512, 1, 4, 4)).astype(np.float32)
    data = TrainData(x, np.zeros(512, np.int64), x[:8], np.zeros(8, np.int64), resolution=4, channels=1)
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(16, 1)).eval()
    model[0].momentum = 0.5
    assert recalibrate_batchnorm(model, data, samples=512, batch_size=64) == 1
    assert float(model[0].running_mean) == pytest.approx(float(x.mean()), abs=1e-4)
    assert float(model[0].running_var) == pytest.approx(float(x.var(ddof=1)), rel=1e-2)
    assert model[0].momentum == 0.5 and not model.training  # everything else as it was
    assert recalibrate_batchnorm(nn.Linear(2, 2), data) == 0


def test_distilled_fine_tune_leaves_the_teacher_unchanged(digits):
    model = zoo.create("digits_cnn", calibrate=False)
    fine_tune(model, digits, 0.5, lr=3e-3, progress=False)
    before = _state(model)
    result = prune_channels(model, torch.from_numpy(digits.x_test[:2]), ratio=0.5, data=digits, epochs=0.25,
                            distill=True, progress=False)
    assert _same_state(before, _state(model))
    assert result.history and result.params[1] < result.params[0]
    with pytest.raises(ConfigError, match="alpha"):
        fine_tune(model, digits, 0.1, teacher=model, alpha=2.0, progress=False)
