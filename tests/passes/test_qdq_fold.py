"""fold-qdq: DQ -> Conv / MatMul [-> Relu] -> Q groups of quantizer output become QLinearConv /
QLinearMatMul, and the folded model (run by onnxruntime itself) stays within one quantization step
of the QDQ model."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.compress._models import matmuls, residual_cnn
from tuili.compress.quant import quantize_static
from tuili.ir import from_model_proto
from tuili.passes import op_counts
from tuili.passes.qdq_fold import FoldQDQ


def conv_matmul(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> depthwise Conv (stride 2) -> Flatten -> MatMul -> Relu -> MatMul, + a residual Add
    of the two MatMuls, so every compute output is quantized and the output is the sum of two quantized tensors."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(8) * 0.1,
             "w2": rng.standard_normal((8, 1, 3, 3)) * 0.4, "m1": rng.standard_normal((128, 16)) * 0.2,
             "m2": rng.standard_normal((16, 16)) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=8),
             helper.make_node("Flatten", ["c2"], ["f"]),
             helper.make_node("MatMul", ["f", "m1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["r2"]),
             helper.make_node("MatMul", ["r2", "m2"], ["h2"]),
             helper.make_node("Add", ["h2", "r2"], ["y"])]
    graph = helper.make_graph(nodes, "conv_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantized(model: onnx.ModelProto, shape: tuple, tmp_path) -> onnx.ModelProto:
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, src)
    quantize_static(src, dst, {"x": np.random.default_rng(0).standard_normal((32,) + shape).astype(np.float32)})
    return onnx.load(dst)


def folded(model: onnx.ModelProto) -> onnx.ModelProto:
    g = from_model_proto(model)
    FoldQDQ().run(g)
    g.validate()
    return g.to_proto()


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def output_step(model: onnx.ModelProto) -> float:
    """What one quantization step of each input moves the float output Add(DQ(a), DQ(b)) by."""
    out = model.graph.output[0].name
    add = next(n for n in model.graph.node if out in n.output)
    dqs = [n for n in model.graph.node if set(n.output) & set(add.input)]
    assert add.op_type == "Add" and [n.op_type for n in dqs] == ["DequantizeLinear"] * 2
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return sum(float(inits[n.input[1]]) for n in dqs)


def test_conv_and_matmul_groups_fold_within_one_step(tmp_path):
    qdq = quantized(conv_matmul(), (3, 8, 8), tmp_path)
    out = folded(qdq)
    ops = op_counts(from_model_proto(out))
    assert ops["QLinearConv"] == 2 and ops["QLinearMatMul"] == 2 and ops["Conv"] == 0 and ops["MatMul"] == 0
    assert ops["Relu"] == 0  # the quantizer folded them into the Qs; nothing left to fold
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8)).astype(np.float32)
    steps = np.abs(ort_run(out, x) - ort_run(qdq, x)) / output_step(qdq)
    assert steps.max() <= 1 + 1e-4


def test_quantizer_models_fold(tmp_path):
    cnn = from_model_proto(folded(quantized(residual_cnn(), (1, 8, 8), tmp_path)))
    assert op_counts(cnn)["QLinearConv"] == 2
    pool = next(n for n in cnn.nodes if n.op_type == "MaxPool")  # pools the integers: Q(MaxPool(DQ(v))) = MaxPool(v)
    assert pool.inputs[0].producer.op_type == "QLinearConv"
    assert pool.outputs[0].dtype == onnx.TensorProto.UINT8
    mlp = op_counts(from_model_proto(folded(quantized(matmuls(), (80,), tmp_path))))
    assert mlp["QLinearMatMul"] == 1 and mlp["Gemm"] == 1 and mlp["MatMul"] == 1  # Gemm and a float output stay


def _group(relu_zero_point: int | None, bias_scale_factor: float = 1.0) -> onnx.ModelProto:
    """DQ(x) , DQ(w) , DQ(b) -> Conv [-> Relu] -> Q, by hand."""
    rng = np.random.default_rng(3)
    xs, ws = np.float32(0.05), np.array([0.01, 0.02], np.float32)
    inits = {"xs": xs, "xz": np.uint8(128), "wq": rng.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8), "ws": ws,
             "bq": np.array([100, -50], np.int32), "bs": (xs * ws * np.float32(bias_scale_factor)).astype(np.float32),
             "ys": np.float32(0.1), "yz": np.uint8(0 if relu_zero_point is None else relu_zero_point)}
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    last = "c"
    if relu_zero_point is not None:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        last = "r"
    nodes.append(helper.make_node("QuantizeLinear", [last, "ys", "yz"], ["y"]))
    graph = helper.make_graph(nodes, "group", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 5, 5])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_relu_folds_only_where_the_q_clamps_at_zero():
    xq = np.random.default_rng(4).integers(0, 256, (1, 3, 5, 5)).astype(np.uint8)
    for zp, folds in ((0, True), (20, False)):
        qdq = _group(zp)
        out = folded(qdq)
        assert op_counts(from_model_proto(out))["QLinearConv"] == int(folds)
        run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"xq": xq})[0]
               for m in (qdq, out)]
        assert np.abs(run[0].astype(int) - run[1].astype(int)).max() <= 1


def test_a_bias_of_another_scale_is_left_alone():
    assert op_counts(from_model_proto(folded(_group(None, bias_scale_factor=2.0))))["QLinearConv"] == 0
    assert op_counts(from_model_proto(folded(_group(None))))["QLinearConv"] == 1
