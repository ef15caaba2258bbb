"""The one interface every way of running a model version implements (Triton's scheduler interface).

    enqueue(feeds, batch, priority, timeout_us) -> awaitable outputs
    inflight                                    -> requests accepted and not yet answered
    healthy                                     -> whether it can serve now
    stop()                                      -> finish what was accepted, refuse the rest, free the instances

The per-model ``Scheduler`` (queues, dynamic batcher, instance threads) and the ``EnsembleRunner``
both implement it, so the server runs a version without knowing which one it holds.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable

import numpy as np

Outputs = dict[str, np.ndarray]


class Runner(ABC):
    """Base of the runners: the in-flight count and waiting for it to reach zero live here."""

    #: whether ``enqueue`` takes the request's ``sequence`` (correlation id and flags; serve.sequence)
    takes_sequences = False

    def __init__(self) -> None:
        self._inflight = 0  # touched on the event loop only
        self._idle: asyncio.Event | None = None

    @abstractmethod
    def enqueue(self, feeds: dict[str, np.ndarray], batch: int, priority: int = 0, timeout_us: int = 0) -> Awaitable[Outputs]:
        """Accept one checked request (``batch`` = its size along dim 0, 1 for non-batching models).

        Refusals (queue full, unloading, bad priority) raise here or from the awaitable."""

    @abstractmethod
    async def stop(self) -> None:
        """Let the accepted requests finish, refuse new ones and release what the runner holds."""

    @property
    def healthy(self) -> bool:
        """Whether it can serve now (a scheduler whose instance workers are all down cannot)."""
        return True

    @property
    def inflight(self) -> int:
        return self._inflight

    def _accepted(self) -> None:
        self._inflight += 1

    def _answered(self, *_) -> None:
        self._inflight -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every accepted request has been answered."""
        while self._inflight:
            self._idle = asyncio.Event()
            await self._idle.wait()
