"""Graph.replace_nodes: the one splice passes rewrite through (remove, insert in place, rewire)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import tuili
from tuili.errors import InvalidGraphError
from tuili.ir.core import Node

F = TensorProto.FLOAT


def _chain():
    """x -> Neg(a) -> Relu(b) -> Exp(y); Sigmoid(x) -> s (also an output)."""
    g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["a"], name="neg"),
         helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
         helper.make_node("Relu", ["a"], ["b"], name="relu"),
         helper.make_node("Exp", ["b"], ["y"], name="exp")],
        "g", [helper.make_tensor_value_info("x", F, [2])],
        [helper.make_tensor_value_info("y", F, [2]), helper.make_tensor_value_info("s", F, [2])])
    return tuili.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _run(graph, x):
    return tuili.InferenceSession(graph, opt_level=0).run(None, {"x": x})


def _by_name(graph):
    return {n.name: n for n in graph.nodes}


def test_replacement_takes_over_an_output_value_in_place_of_the_last_old_node():
    g = _chain()
    n = _by_name(g)
    b = n["relu"].outputs[0]
    # Neg then Relu  ==>  one node producing the same Value ``b`` (keeps its name and its reader)
    fused = Node("Abs", [g.values["x"]], [b], name="abs", graph=g)
    g.replace_nodes([n["neg"], n["relu"]], [fused])
    g.validate()
    assert [m.name for m in g.nodes] == ["sig", "abs", "exp"]
    assert b.producer is fused and b.uses == [(n["exp"], 0)]
    assert "a" not in g.values and g.values["b"] is b
    assert [m for m, _ in g.values["x"].uses] == [n["sig"], fused]  # the old reads are gone
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_allclose(_run(g, x)[0], np.exp(np.abs(x)))


def test_values_map_moves_readers_and_graph_output_slots():
    g = _chain()
    n = _by_name(g)
    new = Node("Tanh", [n["relu"].outputs[0]], [g.new_value("t")], name="tanh", graph=g)
    g.replace_nodes([n["exp"]], [new], {n["exp"].outputs[0]: new.outputs[0]})
    g.validate()
    assert [o.name for o in g.outputs] == ["t", "s"] and "y" not in g.values
    assert [m.name for m in g.nodes] == ["neg", "sig", "relu", "tanh"]


def test_remove_node_is_a_replacement_by_nothing():
    g = _chain()
    n = _by_name(g)
    n["exp"].outputs[0].replace_all_uses_with(n["relu"].outputs[0])
    g.remove_node(n["exp"])
    g.validate()
    assert g.outputs[0].name == "b" and n["relu"].outputs[0].uses == []


def test_refusals_leave_the_node_list_unchanged():
    g = _chain()
    n = _by_name(g)
    before = list(g.nodes)
    with pytest.raises(InvalidGraphError, match="read by node 'exp'"):
        g.remove_node(n["relu"])
    with pytest.raises(InvalidGraphError, match="a graph output"):
        g.remove_node(n["sig"])
    with pytest.raises(InvalidGraphError, match="only nodes of this graph"):
        g.replace_nodes([Node("Neg", [], [], graph=g)], [])
    reads_dead = Node("Abs", [n["neg"].outputs[0]], [n["relu"].outputs[0]], graph=g)
    with pytest.raises(InvalidGraphError, match="which is being removed"):
        g.replace_nodes([n["neg"], n["relu"]], [reads_dead])
    assert g.nodes == before


def test_removing_a_node_with_a_body_drops_the_bodys_outer_reads():
    then = helper.make_graph([], "then", [], [helper.make_tensor_value_info("a", F, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", F, [2])])
    g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["a"], name="neg"),
         helper.make_node("Greater", ["k", "k0"], ["c"], name="gt"),
         helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", F, [2]), helper.make_tensor_value_info("k", F, [])],
        [helper.make_tensor_value_info("y", F, [2])],
        [helper.make_tensor("k0", F, [], [0.0])])
    graph = tuili.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    neg, iff = _by_name(graph)["neg"], _by_name(graph)["if"]
    assert [m.name for m, _ in graph.values["x"].uses] == ["neg", ""]  # the else body reads x
    graph.outputs = [neg.outputs[0]]
    graph.remove_node(iff)
    assert [m.name for m, _ in graph.values["x"].uses] == ["neg"]
    graph.validate()
