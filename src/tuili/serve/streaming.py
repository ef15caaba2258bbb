"""Decoupled models: zero, one or many responses per request (``model_transaction_policy { decoupled: true }``).

A python model in decoupled mode answers through ``request.get_response_sender()`` (tuili.backends.python,
across the worker-process boundary in tuili.backends.worker); each response reaches the request's
``ResponseStream`` from the instance thread (or the model's own threads) and is handed to the event loop.
``InferenceServer.infer_stream`` turns them into ``StreamedResponse`` s for the adapters: gRPC
``ModelStreamInfer`` (one stream message each) and the generate extension (``generate_stream``: one
server-sent event each). A consumer that stops early (its client went away) cancels the stream: the
model's ``request.is_cancelled()`` turns true and whatever it still sends is dropped.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tuili.serve.errors import DecoupledModelError, clip
from tuili.serve.types import InferResponse


def refuse_unary(model: str) -> DecoupledModelError:
    return DecoupledModelError(
        f"model '{clip(model)}' has a decoupled transaction policy (zero or many responses per request), which this "
        f"endpoint does not support: it answers every request exactly once. Use gRPC ModelStreamInfer "
        f"(tritonclient's start_stream / async_stream_infer) or POST /v2/models/{clip(model)}/generate_stream")


@dataclass(slots=True)
class Streamed:
    """One response of a decoupled model as the instance thread sends it: outputs or an error, and the final flag."""

    outputs: dict | None
    error: BaseException | None
    final: bool


@dataclass(slots=True)
class StreamedResponse:
    """One response to a client: ``response`` (None for an empty final one), or ``error``; ``final``: the last."""

    response: InferResponse | None
    error: BaseException | None
    final: bool


class ResponseStream:
    """The responses to one request of a decoupled model, from any thread to the event loop."""

    __slots__ = ("loop", "queue", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[Streamed] = asyncio.Queue()
        self.cancelled = False  # read by the model (is_cancelled) from its threads: a plain flag

    def push(self, outputs: dict | None, error: BaseException | None, final: bool) -> None:
        """Called from the instance thread (or the model's own threads)."""
        if not self.cancelled:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, Streamed(outputs, error, final))

    def end(self, error: BaseException | None) -> None:
        """The call ended (on the loop): if it failed before the final response, that is the error."""
        self.queue.put_nowait(Streamed(None, error, True))
