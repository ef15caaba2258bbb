"""One exception hierarchy for all of tuili.

Every message says what went wrong, where (model, node, op type, input name,
shape) and what to do. The server maps these classes to V2 error bodies and
HTTP/gRPC statuses, so pick the most specific class.
"""
from __future__ import annotations


class TuiliError(Exception):
    """Base of every error tuili raises on purpose."""


class ModelLoadError(TuiliError):
    """A model file or bytes could not be read or parsed (missing, truncated, corrupt)."""


class InvalidGraphError(TuiliError):
    """The graph is structurally wrong: cycle, dangling input, duplicate names, bad subgraph."""


class UnsupportedOpError(TuiliError):
    """No kernel (or shape rule) exists for an op type / domain / opset."""


class ShapeInferenceError(TuiliError):
    """Shapes or dtypes of a node's inputs are inconsistent with the op's rules."""


class InvalidInputError(TuiliError):
    """A feed is wrong: unknown or missing name, wrong shape, wrong dtype, malformed data."""


class KernelError(TuiliError):
    """A kernel failed at run time; the message names the node and op."""


class ConfigError(TuiliError):
    """A configuration (model config, CLI option) is missing a field or has a bad value."""


class ModelNotFoundError(TuiliError):
    """A model or version is not in the repository or not loaded."""


class ServerBusyError(TuiliError):
    """A queue is full or a request timed out in the queue."""


class DeadlineExceededError(TuiliError):
    """A request's deadline (its ``timeout`` parameter or the queue policy's) passed before it ran."""


class WorkerDiedError(TuiliError):
    """The process running a model instance died or was killed (hang timeout) with the request in it."""


class UnsupportedModelError(TuiliError):
    """A model is built in a way a tool cannot handle (e.g. data-dependent control flow torch.fx cannot trace)."""
