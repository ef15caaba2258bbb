"""The pattern layer: matching (op types, commutative inputs, uses, back-references, conditions)
and the rewrite driver (first rule wins, sweeps until no rule fires, declines leave the graph)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import tuili
from tests.passes._util import F, counts, model, ort_run
from tuili.errors import ConfigError
from tuili.ir import from_model_proto
from tuili.passes.pattern import Pat, RewritePass, Rule, match, rebuilt


def _graph(nodes, out="y"):
    return from_model_proto(model(nodes, [("x", F, [3]), ("z", F, [3])], [(out, F, [3])]))


def _nodes(g):
    return {n.op_type: n for n in g.nodes}


def test_match_binds_nodes_and_values_through_commutative_inputs():
    g = _graph([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Add", ["z", "n"], ["y"])])
    pat = Pat("Add", inputs=(Pat("Neg", name="neg", uses=1), Pat(name="other")), commutative=True)
    m = match(pat, _nodes(g)["Add"])
    assert m is not None and m["neg"] is _nodes(g)["Neg"] and m["other"] is g.values["z"]
    assert m.root is _nodes(g)["Add"] and m.nodes == [m.root, m["neg"]]
    assert match(Pat("Add", inputs=pat.inputs), _nodes(g)["Add"]) is None  # order matters without commutative
    assert match(Pat("Add", where=lambda n: n.opset < 7), _nodes(g)["Add"]) is None


def test_a_value_pattern_cannot_be_a_rule_root():
    g = _graph([helper.make_node("Neg", ["x"], ["y"])])
    with pytest.raises(ConfigError, match="cannot be a rule's root"):  # was a TypeError: `in None`
        match(Pat(name="v"), _nodes(g)["Neg"])


def test_uses_counts_every_reader_and_graph_outputs():
    g = _graph([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Mul", ["n", "n"], ["y"])])
    mul = _nodes(g)["Mul"]
    assert match(Pat("Mul", inputs=(Pat("Neg", uses=1),)), mul) is None  # read twice (by one node)
    assert match(Pat("Mul", inputs=(Pat("Neg", uses=2),)), mul) is not None
    g2 = from_model_proto(model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["y"])],
                                [("x", F, [3])], [("y", F, [3]), ("n", F, [3])]))
    assert match(Pat("Relu", inputs=(Pat("Neg", uses=1),)), _nodes(g2)["Relu"]) is None  # n is a graph output


def test_a_name_met_again_must_bind_the_same_node():
    # Mul(n, Sigmoid(n)) with n = Neg(x): a back-reference; Mul(n, Sigmoid(other)) is no match
    same = _graph([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Sigmoid", ["n"], ["s"]),
                   helper.make_node("Mul", ["s", "n"], ["y"])])
    other = _graph([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Neg", ["z"], ["n2"]),
                    helper.make_node("Sigmoid", ["n2"], ["s"]), helper.make_node("Mul", ["n", "s"], ["y"])])
    neg = Pat("Neg", name="neg")
    pat = Pat("Mul", inputs=(neg, Pat("Sigmoid", inputs=(neg,))), commutative=True)
    assert match(pat, _nodes(same)["Mul"]) is not None
    assert match(pat, _nodes(other)["Mul"]) is None


class _NegNegToIdentity(RewritePass):
    """Neg(Neg(x)) -> Identity(x); declines when x is the graph input named "z"."""

    name = "neg-neg"
    rules = (Rule(Pat("Neg", inputs=(Pat("Neg", name="inner", uses=1),)),
                  lambda m: None if m["inner"].inputs[0].name == "z"
                  else [rebuilt(m.root, op_type="Identity", inputs=[m["inner"].inputs[0]])]),)


def test_driver_sweeps_until_no_rule_fires_and_declines_change_nothing():
    chain = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["c"]), helper.make_node("Neg", ["c"], ["y"])]
    m = model(chain, [("x", F, [3])], [("y", F, [3])])
    g = from_model_proto(m)
    assert _NegNegToIdentity().run(g)
    assert counts(g) == {"Identity": 2} and g.outputs[0].name == "y"
    g.validate()
    feeds = {"x": np.array([1.0, -2.0, 3.0], np.float32)}
    np.testing.assert_array_equal(tuili.InferenceSession(g, opt_level=0).run(None, feeds)[0], ort_run(m, feeds)[0])
    assert not _NegNegToIdentity().run(g)  # nothing left to fire
    declined = _graph([helper.make_node("Neg", ["z"], ["a"]), helper.make_node("Neg", ["a"], ["y"])])
    assert not _NegNegToIdentity().run(declined) and counts(declined) == {"Neg": 2}
