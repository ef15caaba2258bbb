"""Shared helpers for the shape/tensor/sequence/text/ml kernel tests: run one ONNX node
in onnxruntime (the reference) and straight through tuili's kernel registry."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from tuili.ir.attributes import decode_attribute
from tuili.ops.registry import KernelContext, get_kernel

def _elem_type(a) -> int:
    a = np.asarray(a)
    if a.dtype == object or a.dtype.kind in "SU":
        return TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(a.dtype)


def make_model(op, inputs, n_outputs=1, opset=None, domain="", **attrs):
    """One-node model. ``inputs``: list of arrays or None (omitted optional input)."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, domain=domain or None, **attrs)
    g_in = [
        helper.make_tensor_sequence_value_info(n, _elem_type(a[0]) if a else TensorProto.FLOAT, None)
        if isinstance(a, list)
        else helper.make_tensor_value_info(n, _elem_type(a), np.asarray(a).shape)
        for n, a in zip(names, inputs)
        if a is not None
    ]
    g_out = [onnx.ValueInfoProto(name=o) for o in outs]
    imports = [helper.make_opsetid("", opset or 21)]
    if domain:
        imports.append(helper.make_opsetid(domain, opset))
    model = helper.make_model(helper.make_graph([node], "t", g_in, g_out), opset_imports=imports)
    model.ir_version = 8 if (opset or 21) < 21 or domain else 10
    return model, node


def run_ort(op, inputs, n_outputs=1, opset=None, domain="", **attrs):
    model, _ = make_model(op, inputs, n_outputs, opset, domain, **attrs)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {f"in{i}": np.asarray(a) for i, a in enumerate(inputs) if a is not None}
    return sess.run(None, feeds)


def run_tuili(op, inputs, n_outputs=1, opset=None, domain="", **attrs):
    _, node = make_model(op, inputs, n_outputs, opset, domain, **attrs)
    opset = opset or 21
    kernel = get_kernel(op, domain, opset)
    kw = {a.name: decode_attribute(a) for a in node.attribute}
    if kernel.wants_ctx:
        res = kernel.fn(KernelContext(op, opset, "n", n_outputs), *inputs, **kw)
    else:
        res = kernel.fn(*inputs, **kw)
    return list(res) if isinstance(res, tuple) else [res]


def assert_same(op, inputs, n_outputs=1, opset=None, domain="", rtol=1e-6, atol=1e-6, **attrs):
    """Run both and compare every output (dtype, shape, values)."""
    want = run_ort(op, inputs, n_outputs, opset, domain, **attrs)
    got = run_tuili(op, inputs, n_outputs, opset, domain, **attrs)
    assert len(got) >= len(want)
    for i, (w, g) in enumerate(zip(want, got)):
        g = np.asarray(g)
        w = np.asarray(w)
        if w.dtype.kind in "SU":
            w = w.astype(object)
        assert g.dtype == w.dtype, f"{op} output {i}: dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"{op} output {i}: shape {g.shape} != {w.shape}"
        if w.dtype == object or w.dtype.kind == "b":
            assert np.array_equal(g, w), f"{op} output {i}: {g} != {w}"
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{op} output {i}")
    return got
