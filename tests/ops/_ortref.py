"""onnxruntime as the reference for the kernel tests: build a one-node ONNX model, run it in
onnxruntime and straight through tuili's kernel registry, compare the outputs.

API (``inputs`` is a list of arrays, ``None`` for an omitted optional input, or a list of arrays
for a sequence input; ``attrs`` are the node's attributes):
  make_model(op, inputs, n_outputs=1, opset=21, domain="", **attrs) -> (ModelProto, NodeProto)
  run_model(model, feeds, outputs=None)     -> onnxruntime's outputs for any model
  run_ort(op, inputs, ...)                   -> onnxruntime's outputs for one node (list)
  run_node(node, args, opset, domain="")     -> tuili's kernel outputs for a NodeProto (list)
  run_tuili(op, inputs, ...)                 -> tuili's kernel outputs for one node (list)
  assert_same(op, inputs, ..., rtol=1e-6, atol=1e-6) -> tuili's outputs, after checking each
      against onnxruntime's: same type (ndarray), dtype, shape; strings and booleans equal;
      integers equal (within 1 when atol >= 1, for rounding in quantized kernels); other
      values within rtol/atol.
"""
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


def _value_info(name, a):
    if isinstance(a, list):
        return helper.make_tensor_sequence_value_info(name, _elem_type(a[0]) if a else TensorProto.FLOAT, None)
    return helper.make_tensor_value_info(name, _elem_type(a), np.asarray(a).shape)


def _feeds(inputs):
    return {f"in{i}": np.asarray(a) if not isinstance(a, list) else a for i, a in enumerate(inputs) if a is not None}


def make_model(op, inputs, n_outputs=1, opset=21, domain="", **attrs):
    """One-node model; ``opset`` is imported for the default domain and, if given, for ``domain``."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, domain=domain or None, **attrs)
    g_in = [_value_info(n, a) for n, a in zip(names, inputs) if a is not None]
    g_out = [onnx.ValueInfoProto(name=o) for o in outs]
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, opset))
    model = helper.make_model(helper.make_graph([node], "t", g_in, g_out), opset_imports=imports)
    model.ir_version = 8 if opset < 21 or domain else 10
    return model, node


def run_model(model, feeds, outputs=None):
    """Run ``model`` in onnxruntime (CPU, one thread) and return the requested outputs (all by default)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def run_ort(op, inputs, n_outputs=1, opset=21, domain="", **attrs):
    model, _ = make_model(op, inputs, n_outputs, opset, domain, **attrs)
    return run_model(model, _feeds(inputs))


def run_node(node, args, opset, domain=""):
    """Call the registry kernel of ``node`` with ``args`` and the node's decoded attributes."""
    kernel = get_kernel(node.op_type, domain, opset)
    kw = {a.name: decode_attribute(a) for a in node.attribute}
    if kernel.wants_ctx:
        res = kernel.fn(KernelContext(node.op_type, opset, node.name or "n", len(node.output)), *args, **kw)
    else:
        res = kernel.fn(*args, **kw)
    return list(res) if isinstance(res, tuple) else [res]


def run_tuili(op, inputs, n_outputs=1, opset=21, domain="", **attrs):
    _, node = make_model(op, inputs, n_outputs, opset, domain, **attrs)
    return run_node(node, inputs, opset, domain)


def assert_same(op, inputs, n_outputs=1, opset=21, domain="", *, rtol=1e-6, atol=1e-6, **attrs):
    """Run both and compare every output onnxruntime gives; returns tuili's outputs."""
    want = run_ort(op, inputs, n_outputs, opset, domain, **attrs)
    got = run_tuili(op, inputs, n_outputs, opset, domain, **attrs)
    assert len(got) >= len(want)
    for i, (w, g) in enumerate(zip(want, got)):
        where = f"{op} output {i}"
        if isinstance(w, np.ndarray):
            assert isinstance(g, np.ndarray), f"{where}: {type(g).__name__} is not an ndarray"
        g, w = np.asarray(g), np.asarray(w)
        if w.dtype.kind in "SU":
            w = w.astype(object)
        assert g.dtype == w.dtype, f"{where}: dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"{where}: shape {g.shape} != {w.shape}"
        if w.dtype == object or w.dtype.kind == "b":
            assert np.array_equal(g, w), f"{where}: {g} != {w}"
        elif w.dtype.kind in "iu":
            np.testing.assert_allclose(g.astype(np.int64), w.astype(np.int64), rtol=0, atol=int(atol >= 1), err_msg=where)
        elif w.dtype.kind == "c":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=where)
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol, err_msg=where)
    return got
