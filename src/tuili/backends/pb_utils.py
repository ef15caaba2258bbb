"""A compatible subset of Triton's ``triton_python_backend_utils`` for python-backend models.

Models written for Triton's python backend do ``import triton_python_backend_utils as pb_utils``;
the python backend registers this module under that name, so such a ``model.py`` runs unchanged.
"""
from __future__ import annotations

import numpy as np

from tuili import dtypes


class TritonError(Exception):
    """An error a model reports for one request (``InferenceResponse(error=TritonError(...))``)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL):
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    pass


class Tensor:
    __slots__ = ("_name", "_array")

    def __init__(self, name: str, array):
        self._name = name
        self._array = np.asarray(array) if not isinstance(array, np.ndarray) else array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self):
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True


class InferenceRequest:
    __slots__ = ("_inputs", "_requested", "_id", "_params")

    def __init__(self, inputs: list[Tensor], requested_output_names=(), request_id: str = "", parameters=None, **_):
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._id = request_id
        self._params = parameters or {}

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._id

    def parameters(self) -> str:
        import json

        return json.dumps(self._params)

    def is_cancelled(self) -> bool:
        return False


class InferenceResponse:
    __slots__ = ("_outputs", "_error")

    def __init__(self, output_tensors=(), error: TritonError | None = None, **_):
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for t in request.inputs():
        if t.name() == name:
            return t
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for t in response.output_tensors():
        if t.name() == name:
            return t
    return None


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    for t in model_config.get("input", []):
        if t.get("name") == name:
            return t
    return None


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    for t in model_config.get("output", []):
        if t.get("name") == name:
            return t
    return None


def triton_string_to_numpy(triton_type: str):
    return dtypes.from_config(triton_type).to_numpy().type


TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
