"""What a replica of a model holds in memory, measured: the model loaded by tuili's serving core in a
fresh process, as a replica loads it, and that process's resident size read from /proc. Ray then
places replicas by it (their ``memory`` resource) where the model's ``ray`` block names none."""
from __future__ import annotations

import asyncio
import multiprocessing

from tuili.serve.core import InferenceServer
from tuili.serve.placement import resident_bytes

HEADROOM = 1.25  # requests' tensors, batches and arenas on top of the loaded model


def _load_and_measure(repository: str, load_order: list[tuple[str, str | None]]) -> int:
    async def load() -> int:
        core = InferenceServer(repository, "explicit", strict_readiness=False)
        await core.start()
        try:
            for name, config_json in load_order:
                await core.load_model(name, config_json)
            return resident_bytes()
        finally:
            await core.stop()

    return asyncio.run(load())


def replica_memory(repository: str, load_order: list[tuple[str, str | None]]) -> int:
    """Bytes to reserve for one replica that loads ``load_order`` from ``repository``: the resident
    size of a process that loaded them, with HEADROOM. (A python model's worker processes are not
    counted.)"""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return int(pool.apply(_load_and_measure, (repository, load_order)) * HEADROOM)
