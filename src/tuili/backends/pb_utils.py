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
    __slots__ = ("_inputs", "_requested", "_id", "_params", "_sender", "_cancelled")

    def __init__(self, inputs: list[Tensor], requested_output_names=(), request_id: str = "", parameters=None, **_):
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._id = request_id
        self._params = parameters or {}
        self._sender: InferenceResponseSender | None = None  # set by the backend for a decoupled model
        self._cancelled = _never

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
        """Whether the client gave up on this request (its stream or connection closed)."""
        return self._cancelled()

    def get_response_sender(self) -> InferenceResponseSender:
        """The sender of a decoupled model's responses to this request (Triton's decoupled mode)."""
        if self._sender is None:
            raise TritonModelException("get_response_sender() is for decoupled models: set model_transaction_policy "
                                       "{ decoupled: true } in config.pbtxt, or return the responses from execute()")
        return self._sender


def _never() -> bool:
    return False


class InferenceResponseSender:
    """Sends zero or more responses to one request of a decoupled model; the last send carries
    ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (with a response or None). Thread-safe: a model may
    send from threads of its own, while ``execute`` runs."""

    __slots__ = ("_emit", "_final", "_cancelled")

    def __init__(self, emit, cancelled=_never):
        self._emit = emit  # emit(response | None, final: bool)
        self._final = False
        self._cancelled = cancelled

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._final:
            raise TritonModelException("this request's final response was already sent; nothing can follow it")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is None and not final:
            raise TritonModelException("send() needs a response, or flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL")
        self._final = final
        self._emit(response, final)

    def is_cancelled(self) -> bool:
        return self._cancelled()


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
