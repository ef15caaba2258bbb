"""Triton's generate extension (HTTP only): ``POST /v2/models/{m}[/versions/{v}]/generate`` answers one JSON
object, ``.../generate_stream`` one server-sent event per response of the model (a decoupled model's many).

The request is a flat JSON object: each key but ``parameters`` names a model input and its value (a
scalar or a nested list) becomes that input's tensor, in the input's datatype, with leading dimensions
of 1 added up to the input's rank (so ``"text_input": "hi"`` feeds a ``TYPE_STRING`` input of dims
``[1]``). ``parameters`` become the request's parameters. A response is ``model_name``,
``model_version`` and one key per output: a scalar when it holds one element, else the flat list.
"""
from __future__ import annotations

import json

import numpy as np

from tuili.errors import InvalidInputError
from tuili.model_config import ModelSpec
from tuili.serve.errors import clip
from tuili.serve.types import InferInput, InferRequest, InferResponse


def generate_request(model: str, version: str, spec: ModelSpec, doc: dict) -> InferRequest:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInputError("\"parameters\" of the generate request must be a JSON object")
    inputs = []
    for key, value in doc.items():
        if key == "parameters":
            continue
        s = spec.inputs.get(key)
        if s is None:
            raise InvalidInputError(f"generate request: model {clip(model)!r} has no input {clip(repr(key))}; its inputs are "
                                    f"{', '.join(spec.inputs) or '(none)'}")
        rank = len(spec.full_shape(s))
        try:
            if s.datatype == "BYTES":
                arr = np.array(value, dtype=object)
                flat = arr.reshape(-1)
                for i, x in enumerate(flat):
                    if not isinstance(x, str):
                        raise InvalidInputError(f"generate request: input {key!r} takes strings, got {clip(repr(x))}")
                    flat[i] = x.encode()
            else:
                arr = np.array(value, dtype=s.np_dtype)
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidInputError(f"generate request: {clip(repr(key))} is not a valid {s.datatype} value: {clip(str(e))}") from None
        if arr.ndim > rank:
            raise InvalidInputError(f"generate request: {key!r} is nested {arr.ndim} deep; input {key!r} has rank {rank}")
        arr = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
        inputs.append(InferInput(key, s.datatype, list(arr.shape), arr))
    return InferRequest(model, version, "", inputs, None, params)


def generate_response(resp: InferResponse) -> dict:
    doc: dict = {"model_name": resp.model_name, "model_version": resp.model_version}
    for out in resp.outputs:
        arr = out.data
        if out.datatype == "BYTES":
            items = [x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else str(x) for x in arr.reshape(-1)]
        elif out.datatype in ("FP16", "BF16"):
            items = arr.astype(np.float32).reshape(-1).tolist()
        else:
            items = arr.reshape(-1).tolist()
        doc[out.name] = items[0] if len(items) == 1 else items
    return doc


def sse_event(doc: dict) -> bytes:
    """One server-sent event carrying ``doc``."""
    return b"data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
