"""Helpers: build small ONNX models, run them in onnxruntime (the reference) and in tuili."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import tuili
from tuili.ir import from_model_proto, infer_shapes
from tuili.passes import op_counts, optimize

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, initializers=(), opset=17, value_info=()):
    """A ModelProto; inputs/outputs are (name, elem_type, shape) tuples; initializers name -> array."""
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in dict(initializers).items()],
        value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def ort_run(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def optimized(m: onnx.ModelProto, level: int = 2, **kw):
    """(optimized Graph, report): shapes inferred first, as the session does; validated after each pass."""
    g = from_model_proto(m)
    infer_shapes(g)
    report = optimize(g, level, debug=True, **kw)
    g.validate()
    return g, report


def check_against_ort(m: onnx.ModelProto, feeds: dict, level: int = 2, rtol=1e-5, atol=1e-5, **kw):
    """Optimize, run the optimized graph in tuili, compare with onnxruntime on the *unoptimized* model.

    Returns (optimized graph, report)."""
    g, report = optimized(m, level, **kw)
    want = ort_run(m, feeds)
    sess = tuili.InferenceSession(g, opt_level=0)  # exactly the optimized graph
    got = sess.run(None, feeds)
    assert [o.name for o in g.outputs] == [o.name for o in m.graph.output]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    # and through the session's own optimizer at the same level
    got2 = tuili.InferenceSession(m, opt_level=level).run(None, feeds)
    for a, b in zip(got2, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return g, report


def counts(g) -> dict:
    return dict(op_counts(g))


def rng(seed=0):
    return np.random.default_rng(seed)
