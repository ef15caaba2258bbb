"""Conv and tuili::FusedConv on oneDNN with weights packed at plan time (ops._torch), against
onnxruntime, through a session: the preparers only run where the weights are constants."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import tuili
from tuili.ops import _torch
from tuili.ops.registry import NodeInfo
from tuili.runtime.planner import Planner

pytestmark = pytest.mark.skipif(_torch.torch_or_none() is None, reason="torch without oneDNN")


def _conv_model(x_shape, w, b=None, act=None, residual=False, **attrs):
    """Conv (+ residual Add) (+ activation) on constant weights; the optimizer fuses them into FusedConv."""
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c"], **attrs)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])]
    last = "c"
    if residual:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
        nodes.append(helper.make_node("Add", ["c", "z"], ["s"]))
        last = "s"
    if act is not None:
        op, kw = act
        nodes.append(helper.make_node(op, [last], ["y"], **kw))
        last = "y"
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def _check(model, feeds, atol=1e-4):
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    sess = tuili.InferenceSession(model)
    fns = {s.fn.__name__ for s in sess.plan.steps}
    assert fns & {"conv_onednn", "fused_conv_onednn"}, f"no oneDNN step in {fns}"
    for _ in range(2):
        got = sess.run(None, feeds)[0]
        assert got.flags.c_contiguous
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=atol)
    return sess


CASES = [  # (x shape, w shape, attrs)
    ((2, 8, 12, 12), (16, 8, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 8, 13, 11), (16, 8, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ((1, 8, 12, 12), (8, 1, 3, 3), dict(pads=[1, 1, 1, 1], group=8)),                 # depthwise
    ((1, 8, 12, 12), (8, 1, 5, 5), dict(pads=[2, 2, 2, 2], group=8, strides=[2, 2])),
    ((1, 8, 12, 12), (12, 4, 3, 3), dict(pads=[2, 2, 2, 2], group=2, dilations=[2, 2])),
    ((3, 16, 7, 7), (32, 16, 1, 1), {}),                                              # 1x1
    ((1, 3, 17, 17), (8, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2])),
    ((1, 4, 9, 9), (6, 4, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 4, 9, 10), (6, 4, 2, 3), dict(pads=[0, 1, 0, 1])),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CASES)
def test_conv_matches_onnxruntime(x_shape, w_shape, attrs):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    _check(_conv_model(x_shape, w, b, **attrs), {"x": x})


ACTS = [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Clip", {}), ("Sigmoid", {}), ("HardSwish", {}),
        ("Tanh", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4})]


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ACTS, ids=[a[0] for a in ACTS])
def test_fused_conv_activations_and_residual(act, residual):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 8, 8)).astype(np.float32)
    w = rng.standard_normal((10, 6, 3, 3)).astype(np.float32)
    feeds = {"x": x}
    if residual:
        feeds["z"] = rng.standard_normal((2, 10, 8, 8)).astype(np.float32)
    model = _conv_model(x.shape, w, np.ones(10, np.float32), act=act, residual=residual, pads=[1, 1, 1, 1])
    if act[0] == "Clip":
        model.graph.node[-1].input.extend(["lo", "hi"])
        model.graph.initializer.extend([numpy_helper.from_array(np.float32(-1.0), "lo"),
                                        numpy_helper.from_array(np.float32(2.0), "hi")])
    if act[0] == "HardSigmoid":  # no oneDNN post-op: the numpy kernel runs it
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(tuili.InferenceSession(model).run(None, feeds)[0], ref, rtol=1e-4, atol=1e-4)
        return
    _check(model, feeds)


def test_residual_that_broadcasts_falls_back_to_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    feeds = {"x": x, "z": rng.standard_normal((5, 1, 1)).astype(np.float32)}
    _check(_conv_model(x.shape, w, None, act=("Relu", {}), residual=True, pads=[1, 1, 1, 1]), feeds)


def test_other_batch_and_layouts_than_planned():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    model = _conv_model((1, 4, 10, 10), w, None, pads=[1, 1, 1, 1])
    sess = _check(model, {"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)})
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in (rng.standard_normal((5, 4, 10, 10)).astype(np.float32),
              rng.standard_normal((2, 10, 10, 4)).astype(np.float32).transpose(0, 3, 1, 2),  # NHWC-strided
              rng.standard_normal((1, 4, 20, 20)).astype(np.float32)[:, :, ::2, ::2]):         # strided view
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_preparer_declines_what_onednn_cannot_run():
    from tuili.ops.conv import prepare_conv

    w = np.ones((4, 2, 3, 3), np.float32)

    def info(w, dtype=np.float32, **attrs):
        return NodeInfo("Conv", 13, "c", (True, True), (None, w), ((1, 2, 8, 8), w.shape), (np.dtype(dtype), w.dtype),
                        attrs)

    assert prepare_conv(info(w, pads=[1, 1, 1, 1])) is not None
    assert prepare_conv(info(w, pads=[0, 0, 1, 1])) is None                   # asymmetric pads
    assert prepare_conv(info(w.astype(np.float64), np.float64)) is None      # not float32
    assert prepare_conv(NodeInfo("Conv", 13, "c", (True, True), (None, None), ((1, 2, 8, 8), w.shape),
                                 (None, None), {})) is None                  # weight computed at run time
    assert prepare_conv(info(w[:, :, :, :, None].repeat(2, axis=4))) is None  # 3-D conv


def test_planner_prepare_false_keeps_the_generic_kernel():
    from tuili.ir import from_model_proto
    from tuili.ops.conv import conv

    model = _conv_model((1, 2, 5, 5), np.ones((3, 2, 3, 3), np.float32))
    assert Planner(from_model_proto(model), prepare=False).build().steps[0].fn is conv
    assert Planner(from_model_proto(model)).build().steps[0].fn is not conv
