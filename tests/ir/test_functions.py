"""Function bodies: the op's defining function (model-local or schema) instantiated as a Graph.

Instantiated bodies are checked by running them with onnx's reference evaluator."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from tuili.errors import InvalidGraphError
from tuili.ir import from_model_proto, op_function, to_model_proto

F = onnx.TensorProto.FLOAT
I64 = onnx.TensorProto.INT64


def _model(nodes, inputs, outputs, functions=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return from_model_proto(helper.make_model(graph, functions=list(functions),
                                              opset_imports=[helper.make_opsetid("", opset),
                                                             helper.make_opsetid("local", 1)]))


def _evaluate(body, *feeds):
    sess = ReferenceEvaluator(to_model_proto(body))
    return sess.run(None, {v.name: x for v, x in zip(body.inputs, feeds)})


def _scale_function(name="Scale", body_op="Mul"):
    """local::Scale(X) = X * alpha, alpha an attribute with default 2.0 in the function."""
    nodes = [helper.make_node("Constant", [], ["a"], value_float=0.0),
             helper.make_node(body_op, ["X", "a"], ["Y"])]
    nodes[0].attribute[0].ref_attr_name = "alpha"
    fn = helper.make_function("local", name, ["X"], ["Y"], nodes, [helper.make_opsetid("", 18)])
    fn.attribute_proto.append(helper.make_attribute("alpha", 2.0))
    return fn


def test_local_function_substitutes_node_attributes_over_defaults():
    x = helper.make_tensor_value_info("x", F, [3])
    y = helper.make_tensor_value_info("y", F, [3])
    z = helper.make_tensor_value_info("z", F, [3])
    g = _model([helper.make_node("Scale", ["x"], ["y"], domain="local", name="set", alpha=5.0),
                helper.make_node("Scale", ["x"], ["z"], domain="local", name="default")],
               [x], [y, z], [_scale_function()])
    xs = np.array([1, 2, 3], np.float32)
    set_node, default_node = g.nodes
    fn = op_function(set_node)
    assert fn is not None and fn.proto is not None and not fn.context_dependent
    body = fn.instantiate()
    assert [n.op_type for n in body.nodes] == ["Constant", "Mul"]
    assert body.functions == g.functions and body.opset_imports[""] == 18
    np.testing.assert_allclose(_evaluate(body, xs)[0], xs * 5)
    np.testing.assert_allclose(_evaluate(op_function(default_node).instantiate(), xs)[0], xs * 2)


def test_schema_function_with_schema_default_attributes():
    g = _model([helper.make_node("Shrink", ["x"], ["y"], name="shrink", bias=1.5)],
               [helper.make_tensor_value_info("x", F, [4])], [helper.make_tensor_value_info("y", F, [4])])
    fn = op_function(g.nodes[0])
    assert fn.schema is not None and fn.proto is None and not fn.context_dependent
    body = fn.instantiate()
    xs = np.array([-2, -0.4, 0.4, 3], np.float32)
    want = np.where(xs < -0.5, xs + 1.5, np.where(xs > 0.5, xs - 1.5, 0))  # lambd: the schema's 0.5
    np.testing.assert_allclose(_evaluate(body, xs)[0], want)


def test_context_dependent_schema_function_is_built_for_the_input_types():
    g = _model([helper.make_node("Celu", ["x"], ["y"], name="celu"),
                helper.make_node("Celu", ["x"], ["z"], name="celu2", alpha=2.0)],
               [helper.make_tensor_value_info("x", F, [4])],
               [helper.make_tensor_value_info(n, F, [4]) for n in "yz"])
    xs = np.array([-2, -0.5, 0, 3], np.float32)
    for node, alpha in zip(g.nodes, (1.0, 2.0)):  # 1.0: the schema's default
        fn = op_function(node)
        assert fn.context_dependent
        body = fn.instantiate([helper.make_tensor_type_proto(F, [4])])
        want = np.where(xs > 0, xs, alpha * np.expm1(xs / alpha))
        np.testing.assert_allclose(_evaluate(body, xs)[0], want, rtol=1e-6)


def test_function_body_with_a_subgraph_keeps_it_in_the_body_scope():
    then_g = helper.make_graph([helper.make_node("Neg", ["X"], ["r"])], "then", [],
                               [helper.make_tensor_value_info("r", F, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["X"], ["r2"])], "else", [],
                               [helper.make_tensor_value_info("r2", F, None)])
    fn = helper.make_function("local", "NegIf", ["C", "X"], ["Y"],
                              [helper.make_node("If", ["C"], ["Y"], then_branch=then_g, else_branch=else_g)],
                              [helper.make_opsetid("", 18)])
    g = _model([helper.make_node("NegIf", ["c", "x"], ["y"], domain="local")],
               [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                helper.make_tensor_value_info("x", F, [2])], [helper.make_tensor_value_info("y", F, [2])], [fn])
    body = op_function(g.nodes[0]).instantiate()
    branch = body.nodes[0].attrs["then_branch"]
    assert branch.parent is body and branch.nodes[0].inputs[0] is body.inputs[1]
    xs = np.array([1, -2], np.float32)
    np.testing.assert_array_equal(_evaluate(body, np.array(True), xs)[0], -xs)


def test_ops_without_a_function_body():
    g = _model([helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("FancyConv", ["y"], ["z"])],
               [helper.make_tensor_value_info("x", F, None), helper.make_tensor_value_info("w", F, None)],
               [helper.make_tensor_value_info("z", F, None)])
    assert [op_function(n) for n in g.nodes] == [None, None]


def test_body_reading_an_undefined_value_is_named():
    broken = helper.make_function("local", "Broken", ["X"], ["Y"], [helper.make_node("Add", ["X", "nowhere"], ["Y"])],
                                  [helper.make_opsetid("", 18)])
    g = _model([helper.make_node("Broken", ["x"], ["y"], domain="local", name="b1")],
               [helper.make_tensor_value_info("x", F, [1])], [helper.make_tensor_value_info("y", F, [1])], [broken])
    with pytest.raises(InvalidGraphError, match=r"'b1'.*'nowhere'"):
        op_function(g.nodes[0]).instantiate()
