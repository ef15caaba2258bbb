"""Property test: random Conv blocks (optional bias, BatchNorm, per-channel Mul/Add, residual Add,
activation; random kernel/stride/pad/group/dilation) optimized at O2/O3 agree with onnxruntime on
the unoptimized model."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.passes._util import F, check_against_ort, model

ACTS = [None, ("Relu", {}, []), ("LeakyRelu", {"alpha": 0.1}, []), ("Clip", {}, ["lo", "hi"]),
        ("HardSwish", {}, []), ("Sigmoid", {}, []), ("Tanh", {}, [])]


@st.composite
def conv_blocks(draw):
    group = draw(st.sampled_from([1, 2]))
    cin = group * draw(st.integers(1, 3))
    cout = group * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.sampled_from([1, 2]))
    dil = draw(st.sampled_from([1, 2])) if k > 1 else 1
    pad = draw(st.integers(0, 1))
    size = draw(st.integers((k - 1) * dil + 1, 7))
    return dict(group=group, cin=cin, cout=cout, k=k, stride=stride, dil=dil, pad=pad, size=size,
                bias=draw(st.booleans()), bn=draw(st.booleans()), mul=draw(st.booleans()), add=draw(st.booleans()),
                residual=draw(st.booleans()), act=draw(st.sampled_from(ACTS)), level=draw(st.sampled_from([2, 3])),
                seed=draw(st.integers(0, 1000)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_blocks())
def test_random_conv_blocks_agree_with_onnxruntime(p):
    r = np.random.default_rng(p["seed"])
    cout = p["cout"]
    inits = {"w": r.standard_normal((cout, p["cin"] // p["group"], p["k"], p["k"])).astype(np.float32),
             "lo": np.array(-0.5, np.float32), "hi": np.array(1.5, np.float32)}
    conv_in = ["x", "w"]
    if p["bias"]:
        inits["b"] = r.standard_normal(cout).astype(np.float32)
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["t0"], group=p["group"], strides=[p["stride"]] * 2,
                              dilations=[p["dil"]] * 2, pads=[p["pad"]] * 4)]
    cur = "t0"

    def push(op, ins, **attrs):
        nonlocal cur
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        cur = out

    if p["bn"]:
        inits.update(scale=r.uniform(0.5, 2, cout).astype(np.float32), bnb=r.standard_normal(cout).astype(np.float32),
                     mean=r.standard_normal(cout).astype(np.float32), var=r.uniform(0.5, 2, cout).astype(np.float32))
        push("BatchNormalization", [cur, "scale", "bnb", "mean", "var"])
    if p["mul"]:
        inits["m"] = r.standard_normal((cout, 1, 1)).astype(np.float32)
        push("Mul", [cur, "m"])
    if p["add"]:
        inits["a"] = r.standard_normal((1, cout, 1, 1)).astype(np.float32)
        push("Add", ["a", cur])
    osz = (p["size"] + 2 * p["pad"] - (p["k"] - 1) * p["dil"] - 1) // p["stride"] + 1
    inputs = [("x", F, [2, p["cin"], p["size"], p["size"]])]
    feeds = {"x": r.standard_normal((2, p["cin"], p["size"], p["size"])).astype(np.float32)}
    if p["residual"]:
        inputs.append(("z", F, [2, cout, osz, osz]))
        feeds["z"] = r.standard_normal((2, cout, osz, osz)).astype(np.float32)
        push("Add", [cur, "z"])
    if p["act"] is not None:
        op, attrs, extra = p["act"]
        push(op, [cur, *extra], **attrs)
    nodes[-1].output[0] = "y"
    m = model(nodes, inputs, [("y", F, [2, cout, osz, osz])], inits)
    g, _ = check_against_ort(m, feeds, level=p["level"], rtol=1e-4, atol=1e-4)
    assert len(g.nodes) == 1  # everything folded or fused into one node
