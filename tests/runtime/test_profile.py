"""profile: one record per plan step, named after the graph's nodes, timed through the executor hook."""
from __future__ import annotations

import numpy as np
import pytest

import tuili
from tuili.errors import ConfigError
from tuili.runtime.profile import profile


@pytest.fixture(scope="module")
def session(conv_net):
    return tuili.InferenceSession(conv_net, opt_level=0)  # O0: the graph's nodes are the plan's steps


def test_one_record_per_step_named_after_the_graph(session, conv_net):
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    prof = profile(session, {"x": x}, runs=3)
    assert [(s.index, s.op_type, s.node) for s in prof.steps] == [
        (i, n.op_type, n.name) for i, n in enumerate(conv_net.graph.node)]
    assert all(len(s.seconds) == 3 and s.median >= 0 for s in prof.steps)
    conv_step = prof.steps[0]
    assert conv_step.input_shapes == ((2, 3, 8, 8), (4, 3, 3, 3)) and conv_step.output_shapes == ((2, 4, 8, 8),)
    assert prof.total == pytest.approx(np.median([sum(s.seconds[r] for s in prof.steps) for r in range(3)]))


def test_groups_and_table(session):
    prof = profile(session, {"x": np.zeros((1, 3, 8, 8), np.float32)}, runs=2, warmup=0)
    by_op = prof.by(lambda s: s.op_type)
    assert set(by_op) == {"Conv", "Relu", "Add"}
    assert list(by_op.values()) == sorted(by_op.values(), reverse=True)
    table = prof.table(top=2)
    assert table.count("\n") == 3 and "| op type | node |" in table  # header, rule, two steps


def test_profile_a_plan_directly(session):
    prof = profile(session.plan, [np.zeros((1, 3, 8, 8), np.float32)], runs=1)
    assert [s.node for s in prof.steps] == ["conv", "relu", "depthwise", "add"]


def test_session_feeds_are_checked_and_other_engines_refused(session, conv_net):
    with pytest.raises(tuili.TuiliError, match="'x' is missing"):
        profile(session, {}, runs=1)
    with pytest.raises(ConfigError, match="tuili engine.*onnxruntime"):
        profile(tuili.InferenceSession(conv_net, engine="onnxruntime"), {"x": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(ConfigError, match="runs >= 1"):
        profile(session, {"x": np.zeros((1, 3, 8, 8), np.float32)}, runs=0)
