"""Pass manager (levels, fixed point, debug validation, report), the session hook, `tuili optimize`,
and that optimizing never changes the caller's graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import tuili
from tests.passes._util import F, counts, model, optimized, ort_run, rng
from tuili.errors import ConfigError, InvalidGraphError
from tuili.ir import from_model_proto
from tuili.passes import PassManager, copy_graph, optimize, passes_for_level


def _resnet_block():
    r = rng(0)
    c = 4
    inits = {"w1": r.standard_normal((c, c, 3, 3)).astype(np.float32),
             "w2": r.standard_normal((c, c, 3, 3)).astype(np.float32),
             "scale": r.uniform(0.5, 2, c).astype(np.float32), "bias": r.standard_normal(c).astype(np.float32),
             "mean": r.standard_normal(c).astype(np.float32), "var": r.uniform(0.5, 2, c).astype(np.float32)}
    nodes = [
        helper.make_node("Identity", ["x"], ["xi"]),
        helper.make_node("Conv", ["xi", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["b1"]),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "xi"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    return model(nodes, [("x", F, ["N", c, 6, 6])], [("y", F, ["N", c, 6, 6])], inits)


def test_levels_and_fixed_point():
    m = _resnet_block()
    g1, r1 = optimized(m, 1)
    assert counts(g1) == {"Conv": 2, "BatchNormalization": 1, "Relu": 2, "Add": 1}
    g2, r2 = optimized(m, 2)
    assert counts(g2) == {"tuili::FusedConv": 2}
    assert r2.changed and r2.rounds >= 2
    last_round = [r for r in r2.records if r.round == r2.rounds]
    assert last_round and not any(r.changed for r in last_round)  # stopped because nothing changed
    # a second run finds nothing to do: one round, no change
    again = optimize(g2, 2, debug=True)
    assert not again.changed and again.rounds == 1
    feeds = {"x": rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    got = tuili.InferenceSession(g2, opt_level=0).run(None, feeds)[0]
    np.testing.assert_allclose(got, ort_run(m, feeds)[0], rtol=1e-4, atol=1e-4)


def test_report_contents():
    g, report = optimized(_resnet_block(), 2)
    assert report.before["Conv"] == 2 and report.after["tuili::FusedConv"] == 2
    by = report.by_pass()
    assert by["eliminate-noops"]["delta"] == {"Identity": -1}
    assert by["fold-batchnorm"]["delta"] == {"BatchNormalization": -1}
    assert by["fuse-conv"]["delta"] == {"Conv": -2, "Relu": -2, "Add": -1, "tuili::FusedConv": 2}
    assert by["fuse-conv"]["runs"] == report.rounds
    s = report.summary()
    assert s.startswith("O2: 7 -> 2 nodes") and "fold-batchnorm: BatchNormalization -1" in s


def test_bad_level_and_subgraph_root():
    with pytest.raises(ConfigError):
        passes_for_level(4)
    with pytest.raises(ConfigError):
        tuili.InferenceSession(_resnet_block(), opt_level=7)
    g = from_model_proto(_resnet_block())
    sub = tuili.Graph("sub", parent=g)
    with pytest.raises(InvalidGraphError):
        PassManager([]).run(sub)


class _AlwaysChanges:
    name = "always"

    def run(self, graph):
        return True


class _Breaks:
    name = "breaks"

    def run(self, graph):
        node = graph.nodes[0]
        graph.nodes.remove(node)   # leaves readers of its output dangling
        return True


def test_manager_stops_at_max_rounds_and_validates_in_debug():
    g = from_model_proto(_resnet_block())
    report = PassManager([_AlwaysChanges()], max_rounds=5).run(g)
    assert report.rounds == 5 and len(report.records) == 5
    with pytest.raises(InvalidGraphError, match="breaks"):
        PassManager([_Breaks()], debug=True).run(from_model_proto(_resnet_block()))


def test_session_optimizes_a_copy_and_never_mutates_the_callers_graph():
    m = _resnet_block()
    g = tuili.load(m)
    before = g.to_proto().SerializeToString()
    arrays = {k: v.const.copy() for k, v in g.initializers.items()}
    sess = tuili.InferenceSession(g)          # default opt_level=2
    assert sess.optimization_report is not None and sess.optimization_report.after["tuili::FusedConv"] == 2
    assert counts(g) == {"Identity": 1, "Conv": 2, "BatchNormalization": 1, "Relu": 2, "Add": 1}
    for k, v in g.initializers.items():
        np.testing.assert_array_equal(v.const, arrays[k])
    feeds = {"x": rng(2).standard_normal((1, 4, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], ort_run(m, feeds)[0], rtol=1e-4, atol=1e-4)
    # what the session read is unchanged, byte for byte (shape inference may add value_info only)
    after = g.to_proto()
    after.graph.ClearField("value_info")
    ref = onnx.ModelProto.FromString(before)
    ref.graph.ClearField("value_info")
    assert after.SerializeToString() == ref.SerializeToString()
    assert tuili.InferenceSession(g, opt_level=0).optimization_report is None


def test_copy_graph_is_independent():
    g = from_model_proto(_resnet_block())
    c = copy_graph(g)
    optimize(c, 3)
    assert counts(g)["Conv"] == 2 and "tuili" not in g.opset_imports
    assert all(v.graph is g for v in g.values.values())


def test_cli_optimize(tmp_path, capsys):
    from tuili.cli import main

    src = tmp_path / "block.onnx"
    onnx.save(_resnet_block(), src)
    out = tmp_path / "block.opt.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--report"]) == 0
    text = capsys.readouterr().out
    assert "tuili::FusedConv" in text and "BatchNormalization" in text and "fold-batchnorm" in text
    assert "before" in text and "after" in text
    saved = onnx.load(out)
    assert sorted(n.op_type for n in saved.graph.node) == ["FusedConv", "FusedConv"]
    assert {o.domain: o.version for o in saved.opset_import}.get("tuili") == 1
    feeds = {"x": rng(3).standard_normal((2, 4, 6, 6)).astype(np.float32)}
    want = ort_run(_resnet_block(), feeds)[0]
    np.testing.assert_allclose(tuili.InferenceSession(str(out)).run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)

    # --portable -O1: standard ops only, runnable by onnxruntime
    out2 = tmp_path / "block.o1.onnx"
    assert main(["optimize", str(src), "-o", str(out2), "-O", "1", "--portable"]) == 0
    assert "O1:" in capsys.readouterr().out
    np.testing.assert_allclose(ort_run(onnx.load(out2), feeds)[0], want, rtol=1e-4, atol=1e-4)
    out3 = tmp_path / "block.onnx-target.onnx"
    assert main(["optimize", str(src), "-o", str(out3), "--target", "onnx"]) == 0
    assert "O2:" in capsys.readouterr().out
    assert "tuili" not in {o.domain for o in onnx.load(out3).opset_import}
    np.testing.assert_allclose(ort_run(onnx.load(out3), feeds)[0], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(SystemExit):
        main(["optimize", str(src), "-o", str(out3), "--target", "tuili", "--portable"])
    # a bad level is refused by argparse
    with pytest.raises(SystemExit):
        main(["optimize", str(src), "-o", str(out2), "-O", "5"])


# ----------------------------------------------------------------------------- metadata and nesting
def test_levels_come_from_pass_metadata():
    from tuili.passes import PASSES

    for level in range(4):
        names = [p.name for p in passes_for_level(level)]
        assert names == [cls.name for cls in PASSES if cls.level <= level]
    o2 = passes_for_level(2)
    assert {p.name for p in o2 if p.emits_custom_ops} == {"fuse-conv", "fuse-matmul-add", "fuse-attention",
                                                          "fuse-activations-contrib"}
    portable = passes_for_level(3, allow_custom_ops=False)
    assert portable and not any(p.emits_custom_ops for p in portable)
    assert "fuse-gemm" in [p.name for p in portable]  # standard ops: kept for --target onnx


def test_manager_infers_shapes_when_a_pass_needs_them():
    m = model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
              [("x", F, [2, 3])], [("y", F, [2, 4])],
              {"w": rng(0).standard_normal((3, 4)).astype(np.float32), "b": np.ones(4, np.float32)})
    g = from_model_proto(m)  # no shapes inferred: fuse-gemm needs A's rank
    assert g.values["m"].shape is None
    optimize(g, 2, allow_custom_ops=False)
    assert counts(g) == {"Gemm": 1}


class _Counts:
    """Counts its runs; changes nothing."""

    name = "count"

    def __init__(self):
        self.runs = 0

    def run(self, graph):
        self.runs += 1
        return False


def test_managers_nest_and_the_report_keeps_inner_passes():
    from tuili.passes import pipeline

    probe = _Counts()
    outer = PassManager([pipeline(2), probe, pipeline(1)], name="o2-probe-o1", max_rounds=1)
    assert outer.level == 2 and outer.emits_custom_ops and outer.needs_shapes
    g = from_model_proto(_resnet_block())
    report = outer.run(g)
    assert report and report.rounds == 1 and probe.runs == 1
    assert counts(g) == {"tuili::FusedConv": 2}
    by = report.by_pass()
    assert by["O2/fold-batchnorm"]["delta"] == {"BatchNormalization": -1}
    assert by["O2/fuse-conv"]["delta"] == {"Conv": -2, "Relu": -2, "Add": -1, "tuili::FusedConv": 2}
    assert by["count"]["runs"] == 1 and not by["count"]["changed"]
    assert not by["O1/eliminate-noops"]["changed"]  # O2 left nothing for O1
    assert report.summary().startswith("o2-probe-o1: 7 -> 2 nodes")
    # a manager is a pass: its report is truthy only when it changed the graph
    assert not pipeline(2).run(g) and bool(pipeline(2).run(from_model_proto(_resnet_block())))
