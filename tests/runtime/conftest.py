"""Models the runtime tests share."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

F = onnx.TensorProto.FLOAT


@pytest.fixture(scope="session")
def conv_net() -> onnx.ModelProto:
    """Conv 3x3 (padded: im2col) -> Relu -> depthwise Conv 3x3 (padded) -> Add, all named."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["c2"], name="depthwise", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", F, ["N", 4, 8, 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
