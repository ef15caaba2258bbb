"""Bias correction: the shift formula against brute force, and the quantized model's output mean
closer to the float model's than without it (Conv with groups, Conv without bias, Gemm transB)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.compress._models import _init, residual_cnn
from tuili.compress.quant import quantize_static
from tuili.compress.quant.biascorrect import output_shift
from tuili.ir import Graph, Node


def _node(op: str, **attrs) -> Node:
    return Graph().add_node(op, [], attrs=attrs)


@pytest.mark.parametrize("group", [1, 2, 6])
def test_conv_shift_is_the_mean_of_the_weight_error_applied(group):
    rng = np.random.default_rng(0)
    cout, cin = 6, 6
    dw = rng.standard_normal((cout, cin // group, 3, 3))
    x_mean = rng.standard_normal(cin)
    # brute force: a valid convolution of an input that is constant per channel (its mean)
    x = np.broadcast_to(x_mean[:, None, None], (cin, 5, 5))
    want = np.zeros(cout)
    per_group = cout // group
    for c in range(cout):
        g = c // per_group
        xs = x[g * (cin // group):(g + 1) * (cin // group), :3, :3]
        want[c] = (dw[c] * xs).sum()
    got = output_shift(_node("Conv", group=group), dw, np.zeros_like(dw), x_mean)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_shift(trans_b):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 3) if trans_b else (3, 5))
    m = rng.standard_normal(3)
    node = _node("Gemm", transB=trans_b, alpha=2.0, beta=0.5)
    want = (m @ (w.T if trans_b else w)) * 2.0 / 0.5
    np.testing.assert_allclose(output_shift(node, w, np.zeros_like(w), m), want)


def _shifted_model(seed: int = 0):
    """Inputs with a large mean, a depthwise Conv without bias, a Conv and a Gemm(transB): the weights'
    rounding error then moves the output means."""
    rng = np.random.default_rng(seed)
    inits = [_init("dw", rng.standard_normal((4, 1, 3, 3))), _init("w", rng.standard_normal((8, 4, 1, 1))),
             _init("b", rng.standard_normal(8) * 0.1), _init("fc", rng.standard_normal((5, 8))),
             _init("fcb", np.zeros(5))]
    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], name="depthwise", group=4),
             helper.make_node("Conv", ["d", "w", "b"], ["c"], name="pointwise"),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "shifted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_quantized_means_move_closer_to_float(tmp_path):
    model = _shifted_model()
    rng = np.random.default_rng(3)
    calib = {"x": (3.0 + rng.standard_normal((64, 4, 6, 6))).astype(np.float32)}
    test = (3.0 + np.random.default_rng(4).standard_normal((64, 4, 6, 6))).astype(np.float32)
    src = tmp_path / "f.onnx"
    src.write_bytes(model.SerializeToString())
    ref = _run(src, test).mean(0)
    err = {}
    for bc in (True, False):
        out = tmp_path / f"q{bc}.onnx"
        # per-tensor 7-bit weights: coarse enough that the rounding error has a visible mean
        r = quantize_static(src, out, calib, method="minmax", per_channel=False, reduce_range=True, bias_correction=bc)
        assert r.settings["bias_correction"] is bc
        err[bc] = np.abs(_run(out, test).mean(0) - ref).mean()
    assert err[True] < 0.5 * err[False], err


def test_residual_cnn_still_matches(tmp_path):
    """The default (bias correction on) keeps a QDQ model that runs and tracks the float one."""
    src = tmp_path / "r.onnx"
    src.write_bytes(residual_cnn().SerializeToString())
    x = np.random.default_rng(5).standard_normal((32, 1, 8, 8)).astype(np.float32)
    out = tmp_path / "q.onnx"
    quantize_static(src, out, {"x": x})
    ref, got = _run(src, x), _run(out, x)
    snr = 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())
    assert snr > 25
