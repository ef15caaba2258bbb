"""Request checks against a model's spec (names, datatypes, shapes, batch size, parameters).

Pure functions of the request and the ``ModelSpec``: every failure is an InvalidInputError that
names the model, the tensor and what was expected, and nothing here touches a queue or a thread.
"""
from __future__ import annotations

import numpy as np

from tuili import dtypes
from tuili.errors import InvalidInputError
from tuili.model_config import ModelSpec
from tuili.serve.types import InferRequest


def input_dtype(name: str, datatype: str) -> dtypes.DType:
    """The element type of a request tensor's V2 ``datatype`` (the error names the tensor)."""
    try:
        return dtypes.from_v2(datatype)
    except dtypes.UnknownDTypeError as e:
        raise dtypes.UnknownDTypeError(f"input {name!r}: {e}") from None


def request_feeds(model: str, spec: ModelSpec, req: InferRequest) -> dict[str, np.ndarray]:
    """The request's tensors by input name: each a known input of its declared datatype, given once;
    every requested output exists."""
    feeds: dict[str, np.ndarray] = {}
    for inp in req.inputs:
        s = spec.inputs.get(inp.name)
        if s is None:
            raise InvalidInputError(f"model {model!r} has no input {inp.name!r}; its inputs are {', '.join(spec.inputs) or '(none)'}")
        if inp.datatype != s.datatype:
            raise InvalidInputError(f"input {inp.name!r} of model {model!r} has datatype {inp.datatype}, expected {s.datatype}")
        if inp.name in feeds:
            raise InvalidInputError(f"input {inp.name!r} of model {model!r} is given twice")
        feeds[inp.name] = inp.data
    for o in req.outputs or ():
        if o.name not in spec.outputs:
            raise InvalidInputError(f"model {model!r} has no output {o.name!r}; its outputs are {', '.join(spec.outputs)}")
    return feeds


def model_feeds(model: str, spec: ModelSpec, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """``feeds`` as the model takes them (dtype, shape and batch size checked, config reshape applied)
    and the request's batch size (1 for a model without batching)."""
    mb = spec.max_batch_size
    batch = 1
    out = {}
    for name, arr in feeds.items():
        s = spec.inputs.get(name)
        if s is None:
            raise InvalidInputError(f"model {model!r} has no input {name!r}; its inputs are {', '.join(spec.inputs)}")
        if arr.dtype != s.np_dtype:
            if s.datatype == "BYTES" and arr.dtype.kind in "SU":
                arr = arr.astype(object)
            else:
                raise InvalidInputError(f"input {name!r} of model {model!r} has dtype {arr.dtype}, expected {s.datatype} ({s.np_dtype})")
        shape = arr.shape
        dims = s.dims
        if mb > 0:
            if len(shape) != len(dims) + 1:
                raise InvalidInputError(f"input {name!r} of model {model!r} has shape {list(shape)}, expected {[-1] + list(dims)} "
                                        f"(batch dimension first, max_batch_size {mb})")
            b = shape[0]
            if not 1 <= b <= mb:
                raise InvalidInputError(
                    f"input {name!r} of model {model!r} has batch size {b}; it must be between 1 and max_batch_size {mb}")
            if out and b != batch:
                raise InvalidInputError(f"inputs of model {model!r} disagree on the batch size ({batch} vs {b} for {name!r})")
            batch = b
            item = shape[1:]
        else:
            if len(shape) != len(dims):
                raise InvalidInputError(f"input {name!r} of model {model!r} has shape {list(shape)}, expected {list(dims)}")
            item = shape
        for got, want in zip(item, dims):
            if want != -1 and got != want:
                raise InvalidInputError(f"input {name!r} of model {model!r} has shape {list(shape)}, expected {spec.full_shape(s)}")
        if s.reshape is not None:
            arr = arr.reshape(([batch] if mb > 0 else []) + s.reshape)
        out[name] = arr
    missing = [n for n in spec.required_inputs if n not in out]
    if missing:
        raise InvalidInputError(f"model {model!r} is missing input(s) {', '.join(repr(m) for m in missing)}")
    return out, batch


def int_param(params: dict, key: str) -> int:
    """An integer request parameter (``priority``, ``timeout``); 0 when absent."""
    if not params or key not in params:
        return 0
    v = params[key]
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InvalidInputError(f"request parameter {key!r} must be an integer, got {v!r}") from None
