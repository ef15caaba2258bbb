"""O1 passes: no-op elimination, constant folding, CSE, dead nodes — each checked against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.passes._util import F, check_against_ort, counts, model, optimized, rng

I64 = TensorProto.INT64


def test_noops_removed_and_output_name_kept():
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Dropout", ["a"], ["b"]),
        helper.make_node("Cast", ["b"], ["c"], to=F),
        helper.make_node("Reshape", ["c", "shape"], ["d"]),
        helper.make_node("Transpose", ["d"], ["e"], perm=[0, 1, 2]),
        helper.make_node("Relu", ["e"], ["f"]),
        helper.make_node("Identity", ["f"], ["y"]),
    ]
    m = model(nodes, [("x", F, [2, 3, 4])], [("y", F, [2, 3, 4])], {"shape": np.array([2, 3, 4], np.int64)})
    feeds = {"x": rng().standard_normal((2, 3, 4)).astype(np.float32)}
    g, report = check_against_ort(m, feeds, level=1)
    assert counts(g) == {"Relu": 1}
    assert g.outputs[0].name == "y" and g.outputs[0].producer.op_type == "Relu"
    assert report.by_pass()["eliminate-noops"]["delta"]["Identity"] == -2


def test_noops_that_do_work_are_kept():
    nodes = [
        helper.make_node("Cast", ["x"], ["a"], to=TensorProto.DOUBLE),          # changes the type
        helper.make_node("Reshape", ["a", "shape"], ["b"]),                       # changes the shape
        helper.make_node("Dropout", ["b"], ["c", "mask"]),                         # the mask is an output
        helper.make_node("Identity", ["x"], ["y"]),                                # graph input -> output
    ]
    m = model(nodes, [("x", F, [2, 3])], [("c", TensorProto.DOUBLE, [3, 2]), ("mask", TensorProto.BOOL, [3, 2]),
                                          ("y", F, [2, 3])], {"shape": np.array([3, 2], np.int64)})
    feeds = {"x": rng().standard_normal((2, 3)).astype(np.float32)}
    g, _ = check_against_ort(m, feeds, level=1)
    assert counts(g) == {"Cast": 1, "Reshape": 1, "Dropout": 1, "Identity": 1}


def test_constant_folding_and_size_cap():
    nodes = [
        helper.make_node("Constant", [], ["c1"], value=helper.make_tensor("v", F, [3], [1.0, 2.0, 3.0])),
        helper.make_node("Mul", ["c1", "two"], ["c2"]),
        helper.make_node("Exp", ["c2"], ["c3"]),
        helper.make_node("Add", ["x", "c3"], ["y"]),
        # a huge ConstantOfShape is not materialized at optimization time
        helper.make_node("ConstantOfShape", ["big_shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["z"], keepdims=0),
    ]
    m = model(nodes, [("x", F, [2, 3])], [("y", F, [2, 3]), ("z", F, [])],
              {"two": np.array(2.0, np.float32), "big_shape": np.array([2048, 1024], np.int64)})
    feeds = {"x": rng().standard_normal((2, 3)).astype(np.float32)}
    g, _ = check_against_ort(m, feeds, level=1)
    c = counts(g)
    assert c == {"Add": 1, "ConstantOfShape": 1, "ReduceSum": 1}
    add = next(n for n in g.nodes if n.op_type == "Add")
    np.testing.assert_allclose(add.inputs[1].const, np.exp(np.array([2.0, 4.0, 6.0], np.float32)), rtol=1e-6)


def test_initializer_that_is_an_input_is_not_folded():
    # "w" has a default (initializer) but is also a graph input: a feed may replace it
    nodes = [helper.make_node("Neg", ["w"], ["nw"]), helper.make_node("Add", ["x", "nw"], ["y"])]
    m = model(nodes, [("x", F, [3]), ("w", F, [3])], [("y", F, [3])], {"w": np.ones(3, np.float32)})
    feeds = {"x": np.arange(3, dtype=np.float32), "w": np.array([5.0, 6.0, 7.0], np.float32)}
    g, _ = check_against_ort(m, feeds, level=1)
    assert counts(g) == {"Neg": 1, "Add": 1}


def test_folded_output_that_is_a_graph_output():
    nodes = [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("v", I64, [2], [4, 5])),
             helper.make_node("Mul", ["k", "k"], ["y"]),
             helper.make_node("Shape", ["x"], ["s"])]
    m = model(nodes, [("x", F, [2, 3])], [("y", I64, [2]), ("s", I64, [2])])
    g, _ = check_against_ort(m, {"x": np.zeros((2, 3), np.float32)}, level=1)
    assert counts(g) == {"Shape": 1}
    assert g.outputs[0].name == "y" and g.outputs[0].is_initializer


def test_cse_merges_equal_nodes_and_constants():
    nodes = [
        helper.make_node("Relu", ["x"], ["r1"]),
        helper.make_node("Relu", ["x"], ["r2"]),
        helper.make_node("Mul", ["r1", "k1"], ["m1"]),
        helper.make_node("Mul", ["r2", "k2"], ["m2"]),   # k2 has the same bytes as k1
        helper.make_node("Add", ["m1", "m2"], ["y"]),
        helper.make_node("LeakyRelu", ["x"], ["l1"], alpha=0.1),
        helper.make_node("LeakyRelu", ["x"], ["l2"], alpha=0.2),  # different attribute: kept
        helper.make_node("Sub", ["l1", "l2"], ["z"]),
    ]
    k = np.array([1.5, -2.0, 3.0], np.float32)
    m = model(nodes, [("x", F, [2, 3])], [("y", F, [2, 3]), ("z", F, [2, 3])], {"k1": k, "k2": k.copy()})
    feeds = {"x": rng().standard_normal((2, 3)).astype(np.float32)}
    g, _ = check_against_ort(m, feeds, level=1)
    assert counts(g) == {"Relu": 1, "Mul": 1, "Add": 1, "LeakyRelu": 2, "Sub": 1}
    assert len(g.initializers) == 1


def test_cse_when_the_duplicate_is_a_graph_output():
    nodes = [helper.make_node("Sigmoid", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["y"]),
             helper.make_node("Neg", ["a"], ["z"])]
    m = model(nodes, [("x", F, [4])], [("y", F, [4]), ("z", F, [4])])
    g, _ = check_against_ort(m, {"x": np.linspace(-2, 2, 4).astype(np.float32)}, level=1)
    assert counts(g) == {"Sigmoid": 1, "Neg": 1}
    assert [v.name for v in g.outputs] == ["y", "z"]


def test_dead_nodes_and_unused_initializers_removed():
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Exp", ["x"], ["unused1"]),
             helper.make_node("Mul", ["unused1", "w"], ["unused2"])]
    m = model(nodes, [("x", F, [3])], [("y", F, [3])], {"w": np.ones(3, np.float32), "lonely": np.zeros(2)})
    g, report = check_against_ort(m, {"x": np.array([-1.0, 0.0, 1.0], np.float32)}, level=1)
    assert counts(g) == {"Relu": 1}
    assert not g.initializers
    assert report.by_pass()["eliminate-dead"]["delta"] == {"Exp": -1, "Mul": -1}


def test_level_zero_changes_nothing():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    m = model(nodes, [("x", F, [3])], [("y", F, [3])])
    g, report = optimized(m, 0)
    assert counts(g) == {"Identity": 1, "Relu": 1} and not report.changed and report.records == []


@pytest.mark.parametrize("level", [1, 2, 3])
def test_subgraph_outer_values_survive(level):
    """If-branches read outer values (one produced by an Identity, one with a CSE twin): the
    optimizer must keep them, and the result must match onnxruntime."""
    then_g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, [3])])
    else_g = helper.make_graph([helper.make_node("Identity", ["b"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F, [3])])
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Exp", ["x"], ["b"]),
        helper.make_node("Exp", ["x"], ["b2"]),    # a CSE twin of b
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Add", ["r", "b2"], ["y"]),
    ]
    m = model(nodes, [("x", F, [3])], [("y", F, [3])], {"zero": np.array(0.0, np.float32)})
    for x in (np.array([1.0, 2.0, 3.0], np.float32), np.array([-1.0, -2.0, 0.5], np.float32)):
        check_against_ort(m, {"x": x}, level=level)


def test_folding_limit_blocks_expansion_but_not_same_size_results():
    from tuili.ir import from_model_proto
    from tuili.passes.constant_folding import ConstantFolding

    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),          # 20 elements from 20: folds
             helper.make_node("MatMul", ["x", "wt"], ["y"]),
             helper.make_node("ConstantOfShape", ["shape"], ["big"]),            # 25 elements from 2: refused
             helper.make_node("ReduceSum", ["big"], ["z"], keepdims=0)]
    m = model(nodes, [("x", F, [3, 5])], [("y", F, [3, 4]), ("z", F, [])],
              {"w": np.arange(20, dtype=np.float32).reshape(4, 5), "shape": np.array([5, 5], np.int64)})
    g = from_model_proto(m)
    fold = ConstantFolding(max_elements=10)
    assert fold.run(g)
    assert sorted(n.op_type for n in g.nodes) == ["ConstantOfShape", "MatMul", "ReduceSum"]
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const if g.nodes[0].op_type == "MatMul"
                                  else next(n for n in g.nodes if n.op_type == "MatMul").inputs[1].const,
                                  np.arange(20, dtype=np.float32).reshape(4, 5).T)
    assert not fold.run(g)  # fixed point
