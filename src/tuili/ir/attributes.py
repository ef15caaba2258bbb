"""Decode ONNX attributes into the plain Python values kernels receive."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
from onnx import AttributeProto, numpy_helper

_A = AttributeProto


def decode_attribute(attr: AttributeProto, graph_decoder: Callable[[onnx.GraphProto], Any] | None = None) -> Any:
    """int, float, str, list[...], ndarray (TENSOR); GRAPH goes through ``graph_decoder`` if given."""
    t = attr.type
    if t == _A.INT:
        return int(attr.i)
    if t == _A.FLOAT:
        return float(attr.f)
    if t == _A.STRING:
        return attr.s.decode("utf-8", errors="surrogateescape")
    if t == _A.INTS:
        return [int(v) for v in attr.ints]
    if t == _A.FLOATS:
        return [float(v) for v in attr.floats]
    if t == _A.STRINGS:
        return [s.decode("utf-8", errors="surrogateescape") for s in attr.strings]
    if t == _A.TENSOR:
        return numpy_helper.to_array(attr.t)
    if t == _A.TENSORS:
        return [numpy_helper.to_array(x) for x in attr.tensors]
    if t == _A.SPARSE_TENSOR:
        return sparse_to_dense(attr.sparse_tensor)
    if t == _A.GRAPH:
        return graph_decoder(attr.g) if graph_decoder else attr.g
    if t == _A.GRAPHS:
        return [graph_decoder(g) if graph_decoder else g for g in attr.graphs]
    if t == _A.TYPE_PROTO:
        return attr.tp
    if t == _A.TYPE_PROTOS:
        return list(attr.type_protos)
    raise ValueError(f"attribute {attr.name!r} has unknown type {t}")


def sparse_to_dense(sp: onnx.SparseTensorProto):
    import numpy as np

    values = numpy_helper.to_array(sp.values)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    dims = tuple(sp.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    if indices.ndim == 1:  # linearized indices
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense
