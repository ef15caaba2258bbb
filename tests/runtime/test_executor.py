"""Planner + executor: the flat step list, the per-step hook, function-body steps."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from tuili.ir import from_model_proto
from tuili.runtime import executor
from tuili.runtime.planner import FunctionCall, Planner

F = onnx.TensorProto.FLOAT


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_plan_runs_the_graph_step_by_step(conv_net):
    plan = Planner(from_model_proto(conv_net)).build()
    assert [s.node_name for s in plan.steps] == ["conv", "relu", "depthwise", "add"]
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (y,) = executor.run(plan, [x])
    np.testing.assert_allclose(y, _ort(conv_net, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_hook_sees_every_step_once_per_run_with_its_values(conv_net):
    plan = Planner(from_model_proto(conv_net)).build()
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    seen = []
    (hooked,) = executor.run(plan, [x], hook=lambda step, inputs, result, seconds: seen.append(
        (step, [getattr(v, "shape", None) for v in inputs], result.shape, seconds)))
    assert [s for s, *_ in seen] == plan.steps  # the plan's own steps, in order
    assert seen[0][1] == [(1, 3, 8, 8), (4, 3, 3, 3)] and seen[0][2] == (1, 4, 8, 8)
    assert all(seconds >= 0 for *_, seconds in seen)
    np.testing.assert_array_equal(hooked, executor.run(plan, [x])[0])
    seen.clear()
    executor.run(plan, [x])  # the hook belonged to that run only
    assert seen == []


def test_subgraph_step_is_one_step_for_the_hook():
    then_g = helper.make_graph([helper.make_node("Add", ["x", "x"], ["r"])], "then", [],
                               [helper.make_tensor_value_info("r", F, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["r2"])], "else", [],
                               [helper.make_tensor_value_info("r2", F, [2])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g,
                                                else_branch=else_g)], "g",
                              [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    plan = Planner(from_model_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))).build()
    names = []
    x = np.array([1, 2], np.float32)
    (y,) = executor.run(plan, [np.array(True), x], hook=lambda step, *_: names.append(step.node_name))
    np.testing.assert_array_equal(y, [2, 4])
    assert names == ["branch"]


def test_op_without_kernel_runs_its_function_body_per_input_type():
    body = [helper.make_node("Constant", [], ["two"], value_float=2.0),
            helper.make_node("CastLike", ["two", "X"], ["t"]),
            helper.make_node("Mul", ["X", "t"], ["Y"])]
    fn = helper.make_function("local", "Double", ["X"], ["Y"], body, [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("Double", ["x"], ["y"], domain="local", name="d"),
             helper.make_node("Double", ["i"], ["j"], domain="local", name="d2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2]),
                                           helper.make_tensor_value_info("i", onnx.TensorProto.INT32, [2])],
                              [helper.make_tensor_value_info("y", F, [2]),
                               helper.make_tensor_value_info("j", onnx.TensorProto.INT32, [2])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 18),
                                                                    helper.make_opsetid("local", 1)])
    plan = Planner(from_model_proto(model)).build()
    call = plan.steps[0].fn
    assert isinstance(call, FunctionCall)
    y, j = executor.run(plan, [np.array([1, 2], np.float32), np.array([3, 4], np.int32)])
    np.testing.assert_array_equal(y, [2, 4])
    assert j.dtype == np.int32 and list(j) == [6, 8]
    executor.run(plan, [np.array([5, 6], np.float32), np.array([3, 4], np.int32)])
    assert len(call.plans) == 1  # planned once per input-type signature
