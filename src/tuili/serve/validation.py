"""Request checks: the wire-level ones both adapters share (shapes, parameters) and those against
a model's spec (names, datatypes, shapes, batch size).

Pure functions of the request and the ``ModelSpec``: every failure is an InvalidInputError that
names the model, the tensor or parameter and what was expected, and nothing here touches a queue
or a thread. Shapes are checked in exact integer arithmetic before any array is allocated.
"""
from __future__ import annotations

import numpy as np

from tuili import dtypes
from tuili.errors import InvalidInputError
from tuili.model_config import ModelSpec
from tuili.serve.errors import clip
from tuili.serve.types import InferRequest

#: numpy's limit on the number of dimensions of an array.
MAX_DIMS = 64
#: The largest size in bytes a tensor may describe, zero-element tensors included: what an int64
#: (numpy's size type, onnxruntime's dims) can count.
MAX_BYTES = 2**63 - 1
UINT64_MAX = 2**64 - 1

# Parameters of Triton's protocol with a meaning here and the type their value must have; any other
# key may carry any scalar (the protocol allows custom parameters, passed along unread).
REQUEST_PARAMETERS = {"priority": "uint", "timeout": "uint", "binary_data_output": "bool",
                      "sequence_id": "id", "sequence_start": "bool", "sequence_end": "bool"}
INPUT_PARAMETERS = {"binary_data_size": "uint", "shared_memory_region": "str",
                    "shared_memory_byte_size": "uint", "shared_memory_offset": "uint"}
OUTPUT_PARAMETERS = {"binary_data": "bool", "classification": "uint", "class_count": "uint",
                     "shared_memory_region": "str", "shared_memory_byte_size": "uint", "shared_memory_offset": "uint"}
_KINDS = {"uint": "a non-negative integer", "bool": "true or false", "str": "a string",
          "id": "an unsigned integer or a string"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fits(kind: str, v) -> bool:
    if kind == "uint":
        return _is_int(v) and 0 <= v <= UINT64_MAX
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "id":
        return isinstance(v, str) or (_is_int(v) and 0 <= v <= UINT64_MAX)
    return isinstance(v, (bool, int, float, str))  # "scalar"


def check_parameters(params, known: dict[str, str], where: str) -> dict:
    """``params`` (a JSON object / protobuf map already turned into a dict) with every value of the
    type its key needs; the error names the parameter, where it was and what it must be."""
    if not isinstance(params, dict):
        raise InvalidInputError(f"\"parameters\" of the {where} must be an object of name: value")
    for key, v in params.items():
        kind = known.get(key, "scalar")
        if not _fits(kind, v):
            what = _KINDS.get(kind, "a bool, number or string")
            raise InvalidInputError(f"parameter {clip(repr(key))} of the {where} must be {what}, got {clip(repr(v))}")
    return params


def check_shape(name: str, shape, itemsize: int) -> int:
    """The element count of a request tensor's ``shape``: a list of at most MAX_DIMS non-negative
    integers whose size in bytes, counting only the non-zero dims, fits in MAX_BYTES (so a
    zero-element tensor cannot carry absurd dims into numpy or an engine)."""
    if not isinstance(shape, (list, tuple)) or not all(_is_int(d) for d in shape):
        raise InvalidInputError(f"input {clip(repr(name))} needs \"shape\": a list of non-negative integers, got {clip(repr(shape))}")
    if len(shape) > MAX_DIMS:
        raise InvalidInputError(f"input {clip(repr(name))} has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    count, size = 1, max(1, itemsize)
    for d in shape:
        if d < 0:
            raise InvalidInputError(f"input {clip(repr(name))} has shape {clip(str(list(shape)))}: "
                                    f"a request shape cannot hold negative dimensions")
        count *= d
        if d:
            size *= d
            if size > MAX_BYTES:
                raise InvalidInputError(f"input {clip(repr(name))} has shape {clip(str(list(shape)))}, "
                                        f"which describes more than {MAX_BYTES} bytes")
    return count


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
    """A non-negative integer request parameter (``priority``, ``timeout``); 0 when absent."""
    v = params.get(key, 0) if params else 0
    if not _fits("uint", v):
        raise InvalidInputError(f"request parameter {key!r} must be {_KINDS['uint']}, got {clip(repr(v))}")
    return v


def check_request(req: InferRequest) -> None:
    """The parameters of the request, its inputs and its requested outputs have the types they need."""
    check_parameters(req.parameters, REQUEST_PARAMETERS, "request")
    for inp in req.inputs:
        check_parameters(inp.parameters, INPUT_PARAMETERS, f"input {clip(repr(inp.name))}")
    for o in req.outputs or ():
        check_parameters(o.parameters, OUTPUT_PARAMETERS, f"output {clip(repr(o.name))}")
