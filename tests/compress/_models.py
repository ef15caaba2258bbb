"""Small float models built with onnx.helper, for the quantizer's tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def residual_cnn(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Conv-Relu-MaxPool-Conv-Add(residual)-Relu-GlobalAveragePool-Flatten-Gemm-Softmax on 1x8x8 inputs."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.standard_normal((4, 1, 3, 3)) * 0.5), _init("b1", rng.standard_normal(4) * 0.1),
        _init("w2", rng.standard_normal((4, 4, 3, 3)) * 0.3), _init("b2", rng.standard_normal(4) * 0.1),
        _init("fc_w", rng.standard_normal((4, 10))), _init("fc_b", rng.standard_normal(10) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p1"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "residual_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
                               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul(+Add) -> Relu -> Gemm(transB) on [batch, seq, 16] inputs, for dynamic quantization."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.standard_normal((16, 32)) * 0.3), _init("b1", rng.standard_normal(32) * 0.1),
             _init("w2", rng.standard_normal((8, 32)) * 0.3), _init("b2", rng.standard_normal(8) * 0.1)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Flatten", ["r1"], ["f1"], name="flat", axis=2),
        helper.make_node("Reshape", ["f1", "shape"], ["r2"], name="reshape"),
        helper.make_node("Gemm", ["r2", "w2", "b2"], ["y"], name="fc", transB=1, alpha=0.5, beta=2.0),
    ]
    inits.append(numpy_helper.from_array(np.array([-1, 32], np.int64), "shape"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def matmuls(k: int = 80, n: int = 24, seed: int = 0, outlier: float | None = None) -> onnx.ModelProto:
    """x [batch, K] -> MatMul(w1 [K, K]) -> Relu -> Gemm(transB, w2 [N, K], bias) -> Relu -> MatMul(w3 [N, 8]).
    ``outlier`` puts a weight of that size in row 0 of every output column of w2 (the planted sensitive
    layer: per-channel int8 then rounds the rest of w2 to a few levels) and scales input 0 down to match."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((k, k)) * 0.2
    w2 = rng.standard_normal((n, k)) * 0.2
    if outlier is not None:
        w2[:, 0] = outlier
        w1[:, 0] *= 0.2 / outlier
    inits = [_init("w1", w1), _init("w2", w2), _init("b2", rng.standard_normal(n) * 0.1),
             _init("w3", rng.standard_normal((n, 8)) * 0.3)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
