"""Helpers for the conv/pool/resize/vision/quant kernel tests: one ONNX node run in
onnxruntime (the reference) and straight through tuili's kernel registry."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from tuili.ir.attributes import decode_attribute
from tuili.ops.registry import KernelContext, get_kernel


def _model(op, inputs, n_outputs, opset, attrs):
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, **attrs)
    g_in = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype), np.asarray(a).shape)
        for n, a in zip(names, inputs)
        if a is not None
    ]
    g_out = [onnx.ValueInfoProto(name=o) for o in outs]
    model = helper.make_model(helper.make_graph([node], "t", g_in, g_out), opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return model, node


def run_ort(op, inputs, n_outputs=1, opset=21, **attrs):
    model, _ = _model(op, inputs, n_outputs, opset, attrs)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {f"in{i}": np.asarray(a) for i, a in enumerate(inputs) if a is not None})


def run_tuili(op, inputs, n_outputs=1, opset=21, **attrs):
    _, node = _model(op, inputs, n_outputs, opset, attrs)
    kernel = get_kernel(op, "", opset)
    kw = {a.name: decode_attribute(a) for a in node.attribute}
    args = list(inputs)
    if kernel.wants_ctx:
        res = kernel.fn(KernelContext(op, opset, "n", n_outputs), *args, **kw)
    else:
        res = kernel.fn(*args, **kw)
    return list(res) if isinstance(res, tuple) else [res]


def assert_same(op, inputs, n_outputs=1, opset=21, rtol=1e-4, atol=1e-5, **attrs):
    """Compare every output of tuili's kernel with onnxruntime's (dtype, shape, values)."""
    want = run_ort(op, inputs, n_outputs, opset, **attrs)
    got = run_tuili(op, inputs, n_outputs, opset, **attrs)
    assert len(got) >= len(want)
    for i, (w, g) in enumerate(zip(want, got)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype, f"{op} output {i}: dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"{op} output {i}: shape {g.shape} != {w.shape}"
        if w.dtype.kind in "iub":
            np.testing.assert_allclose(g.astype(np.int64), w.astype(np.int64), rtol=0, atol=int(atol >= 1), err_msg=f"{op} output {i}")
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{op} output {i}")
    return got
