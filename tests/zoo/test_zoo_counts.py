"""Paper tables as tests: parameters and MACs (torch FlopCounterMode, MACs = FLOPs / 2) at each
paper's input size, within 3% of the published figure unless a note says otherwise."""
from __future__ import annotations

import pytest

from tuili.zoo import count, get_spec, list_models

# name -> (params, MACs, tolerance, note). MACs None: the paper prints no such figure.
PAPER = {
    "mobilenet_v1": (4.2e6, 569e6, 0.03, "Table 8"),
    "mobilenet_v2": (3.5e6, 300e6, 0.03, "Table 4 prints 3.4M; the Table 2 network with its classifier has 3.50M"),
    "mobilenet_v3_large": (5.4e6, 219e6, 0.03, "Table 3"),
    "mobilenet_v3_small": (2.5e6, 56e6, 0.03, "Table 3"),
    "shufflenet_v2_x0_5": (1.4e6, 41e6, 0.03, "Table 5 (FLOPs = multiply-adds)"),
    "shufflenet_v2_x1_0": (2.3e6, 146e6, 0.03, "Table 5"),
    "squeezenet1_0": (1_248_424, None, 0.03, "Table 1 params; no MACs in the paper"),
    "squeezenet1_1": (1.24e6, 350e6, 0.03, "v1.1 release: ~350M MACs"),
    "ghostnet_1_0": (5.2e6, 141e6, 0.03, "Table 7"),
    "efficientnet_b0": (5.3e6, 390e6, 0.03, "Table 2: 0.39B FLOPs (multiply-adds)"),
    "mobilevit_xxs": (1.3e6, None, 0.03, "Table 4 params (printed to 2 digits)"),
    "mobilevit_xs": (2.3e6, None, 0.03, "Table 4"),
    "mobilevit_s": (5.6e6, None, 0.03, "Table 4"),
    "resnet18": (11.7e6, 1.8e9, 0.03, "Table 1"),
    "resnet50": (25.6e6, 3.8e9, 0.03, "Table 1, stride on the first 1x1 as in the paper"),
    "bert_small": (11.3e6, None, 0.03, "BERT-Mini, Turc et al."),
    "tinybert_4": (14.5e6, 0.6e9, 0.05, "Table 1: 1.2B FLOPs = 2 x MACs printed to 2 digits (1.15..1.25B)"),
    "distilbert": (66e6, None, 0.03, "66M params"),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_match_paper(name):
    params, macs, tol, note = PAPER[name]
    got_p, got_m = count(name)
    assert abs(got_p / params - 1) <= 0.03, f"{name}: {got_p:,} params vs paper {params:,.0f} ({note})"
    if macs is not None:
        assert abs(got_m / macs - 1) <= tol, f"{name}: {got_m:,} MACs vs paper {macs:,.0f} ({note})"


def test_efficientnet_lite0_matches_paper_params_and_reimplementation_macs():
    # The lite README prints 4.7M params / 407M MACs. The architecture it describes (B0 without SE,
    # ReLU6, unscaled stem/head) has 4.65M params and 385M conv/FC MACs - the figure independent
    # re-implementations also count; 407M is 5.4% above it and we could not reproduce that count.
    p, m = count("efficientnet_lite0")
    assert abs(p / 4.7e6 - 1) <= 0.03
    assert abs(m / 385e6 - 1) <= 0.03
    assert m < count("efficientnet_b0")[1]  # no SE blocks


def test_tinybert_flops_round_to_paper_figure():
    _, macs = count("tinybert_4", seq_len=128)
    assert round(2 * macs / 1e9, 1) == 1.2


def test_gpt2_small_configuration_has_124m_params():
    """The gpt_small code at GPT-2 small's configuration (12 layers, 768 wide, 12 heads) has the
    released model's 124,439,808 parameters (tied LM head counted once)."""
    import torch

    from tuili.zoo.models.gpt import GPT, GPTConfig

    with torch.device("meta"):
        m = GPT(GPTConfig(layers=12, hidden=768, heads=12))
    assert sum(p.numel() for p in m.parameters()) == 124_439_808


def test_gpt_small_param_formula():
    # V*d + P*d + L*(12 d^2 + 13 d) + 2d for GPT-2 blocks with a tied head
    V, P, L, d = 50257, 1024, 4, 256
    assert count("gpt_small")[0] == V * d + P * d + L * (12 * d * d + 13 * d) + 2 * d


def test_resnet50_v1_not_v15():
    # stride on the 3x3 ("v1.5") would give 4.09 GMACs; the paper's placement gives 3.86
    assert abs(count("resnet50")[1] / 3.86e9 - 1) < 0.005


def test_width_multiplier_scales_mobilenet():
    p_half, m_half = count("mobilenet_v2", width=0.5)
    p, m = count("mobilenet_v2")
    # the authors' TF-slim release table lists mobilenet_v2_0.5_224 at 1.95M params, 97M MACs
    assert abs(p_half / 1.95e6 - 1) <= 0.03
    assert abs(m_half / 97e6 - 1) <= 0.03
    assert m_half < m


def test_resolution_changes_macs_not_params():
    p224, m224 = count("resnet18")
    p112, m112 = count("resnet18", resolution=112)
    assert p224 == p112
    assert abs(m112 / m224 - 0.25) < 0.02


def test_every_model_has_a_spec_with_measured_figures():
    names = [s.name for s in list_models()]
    for required in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "shufflenet_v2_x0_5",
                     "shufflenet_v2_x1_0", "squeezenet1_0", "squeezenet1_1", "ghostnet_1_0", "efficientnet_b0",
                     "efficientnet_lite0", "mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "resnet18", "resnet50",
                     "bert_small", "tinybert_4", "gpt_small", "digits_cnn", "glyphs_cnn", "resnet8_glyphs"):
        assert required in names
    s = get_spec("resnet18")
    assert s.params == count("resnet18")[0]
    assert s.inputs == {"input": ("batch", 3, "height", "width")} and s.outputs == ("logits",)
