"""One table from tuili's error classes to the status each protocol answers with.

Both adapters look errors up here, so HTTP and gRPC always agree: the HTTP status and the gRPC
code of a row mean the same (Google's API design guide, as Triton maps its error codes; a body
over the size limit, 413, has no closer gRPC code than RESOURCE_EXHAUSTED). The V2 error body is
``{"error": message}`` over HTTP; gRPC sends the same message as the details.
An exception that is not a TuiliError is a bug: it answers 500 / INTERNAL and its traceback is
logged. Messages are clipped (``clip``) so a request cannot make the server echo megabytes back
(a 100 KB model name, a huge shape).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from tuili.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidGraphError,
    InvalidInputError,
    KernelError,
    ModelLoadError,
    ModelNotFoundError,
    ServerBusyError,
    ShapeInferenceError,
    TuiliError,
    UnsupportedModelError,
    UnsupportedOpError,
    WorkerDiedError,
)

log = logging.getLogger(__name__)


class RequestTooLargeError(InvalidInputError):
    """A request body is over the server's size limit (``--max-body-bytes``)."""


class RequestTimeoutError(InvalidInputError):
    """A request body did not arrive in time (``--body-timeout-secs``): the client stalled."""


class DecoupledModelError(InvalidInputError):
    """A decoupled model asked through an endpoint that answers exactly once (Triton: UNSUPPORTED)."""


#: The longest error message sent to a client; the rest is cut (the log keeps the whole).
MAX_MESSAGE_CHARS = 1000


def clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut (for names echoed in errors)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass(frozen=True, slots=True)
class ErrorStatus:
    http: int
    grpc: str  # a grpc.StatusCode name (grpc itself is only imported by the gRPC adapter)
    retry_after: int | None = None  # seconds, sent as HTTP Retry-After: the condition passes by itself


BAD_REQUEST = ErrorStatus(400, "INVALID_ARGUMENT")
INTERNAL = ErrorStatus(500, "INTERNAL")

#: The most specific class in an exception's MRO decides; a subclass not listed gets its base's row.
STATUS: dict[type[BaseException], ErrorStatus] = {
    TuiliError: INTERNAL,
    InvalidInputError: BAD_REQUEST,
    RequestTooLargeError: ErrorStatus(413, "RESOURCE_EXHAUSTED"),
    RequestTimeoutError: ErrorStatus(408, "DEADLINE_EXCEEDED"),  # HTTP only: gRPC bodies are framed by grpc
    DecoupledModelError: ErrorStatus(400, "UNIMPLEMENTED"),  # as Triton answers it over HTTP and gRPC
    ConfigError: BAD_REQUEST,
    # A model that cannot be loaded is the load request's argument gone wrong (Triton: INVALID_ARG);
    # at inference time these come from the request's shapes, also the client's to fix.
    ModelLoadError: BAD_REQUEST,
    InvalidGraphError: BAD_REQUEST,
    ShapeInferenceError: BAD_REQUEST,
    UnsupportedOpError: ErrorStatus(501, "UNIMPLEMENTED"),  # Triton's UNSUPPORTED
    UnsupportedModelError: ErrorStatus(501, "UNIMPLEMENTED"),  # a tool cannot handle how the model is built
    ModelNotFoundError: ErrorStatus(404, "NOT_FOUND"),
    ServerBusyError: ErrorStatus(503, "UNAVAILABLE", retry_after=1),
    DeadlineExceededError: ErrorStatus(504, "DEADLINE_EXCEEDED"),
    WorkerDiedError: ErrorStatus(503, "UNAVAILABLE", retry_after=1),  # the instance restarts: a retry can succeed
    KernelError: INTERNAL,
}


def status_of(exc: BaseException) -> ErrorStatus:
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return INTERNAL


def message_of(exc: BaseException) -> str:
    """The client-facing message: the error's own, or for a bug its type too; clipped."""
    msg = str(exc) or type(exc).__name__
    if not isinstance(exc, TuiliError):
        msg = f"internal error: {type(exc).__name__}: {msg}"
    return clip(msg, MAX_MESSAGE_CHARS)


def log_failure(exc: BaseException, where: str) -> None:
    """A bug gets its traceback logged; a TuiliError is the client's answer, logged at debug level."""
    if isinstance(exc, TuiliError):
        log.debug("%s: %s: %s", where, type(exc).__name__, exc)
    else:
        log.error("%s failed with an internal error", where, exc_info=exc)
