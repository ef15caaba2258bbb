"""Ensembles: ``ensemble_scheduling`` steps chaining models by tensor name.

Each step maps ensemble tensors to a model's inputs (``input_map``: model input -> ensemble
tensor) and its outputs back (``output_map``: model output -> ensemble tensor). A step runs as
soon as all its inputs exist, so independent steps run concurrently; each step is an ordinary
request to its model (validated, queued and batched with everyone else's requests).
"""
from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from tuili.errors import InvalidInputError, KernelError, ModelNotFoundError, ServerBusyError, TuiliError

log = logging.getLogger(__name__)


class EnsembleRunner:
    def __init__(self, core, name: str, config, stats):
        self.core = core
        self.name = name
        self.stats = stats
        self.steps = [
            (st.model_name, str(st.model_version) if st.model_version > 0 else "", dict(st.input_map), dict(st.output_map))
            for st in config.ensemble_scheduling.step
        ]
        self.outputs = [o.name for o in config.output]
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._stopping = False

    async def run(self, feeds: dict, batch: int, priority: int = 0, timeout_us: int = 0) -> dict:
        if self._stopping:
            raise ServerBusyError(f"ensemble {self.name!r} is unloading; retry the request")
        self._inflight += 1
        try:
            pool = dict(feeds)
            pending = list(range(len(self.steps)))
            while pending:
                ready = [i for i in pending if all(t in pool for t in self.steps[i][2].values())]
                if not ready:
                    missing = sorted({t for i in pending for t in self.steps[i][2].values() if t not in pool})
                    raise KernelError(f"ensemble {self.name!r}: no step can run; tensors {missing} are never produced")
                if len(ready) == 1:
                    results = [await self._step(ready[0], pool, priority, timeout_us)]
                else:
                    results = await asyncio.gather(*(self._step(i, pool, priority, timeout_us) for i in ready))
                for i, res in zip(ready, results):
                    pool.update(res)
                    pending.remove(i)
            self.stats.record_ensemble(batch)
            return {n: pool[n] for n in self.outputs if n in pool}
        finally:
            self._inflight -= 1
            if self._inflight == 0 and self._idle is not None:
                self._idle.set()

    async def _step(self, i: int, pool: dict, priority: int, timeout_us: int) -> dict:
        model, version, input_map, output_map = self.steps[i]
        try:
            mv = self.core.get_model(model, version)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"ensemble {self.name!r} step {i}: {e}") from None
        feeds = {model_in: pool[ens] for model_in, ens in input_map.items()}
        t0 = time.monotonic_ns()
        try:
            out = await self.core.run_model(mv, feeds, priority, timeout_us)
        except InvalidInputError as e:
            mv.stats.record_request(False, time.monotonic_ns() - t0)
            raise InvalidInputError(f"ensemble {self.name!r} step {i} (model {model!r}): {e}") from None
        except TuiliError:
            mv.stats.record_request(False, time.monotonic_ns() - t0)
            raise
        mv.stats.record_request(True, time.monotonic_ns() - t0)
        res = {}
        for model_out, ens in output_map.items():
            if model_out not in out:
                raise KernelError(f"ensemble {self.name!r} step {i}: model {model!r} produced no output {model_out!r}")
            arr = out[model_out]
            spec = mv.spec.outputs.get(model_out)
            if spec is not None:
                if getattr(arr, "dtype", None) != spec.np_dtype:
                    # e.g. a python step returning float64 for a TYPE_FP32 output: use the declared type
                    arr = np.asarray(arr).astype(spec.np_dtype)
                if spec.reshape is not None:  # back from the model's shape to the config's dims
                    lead = [arr.shape[0]] if mv.spec.max_batch_size > 0 and arr.ndim else []
                    arr = arr.reshape(lead + list(spec.dims))
            res[ens] = arr
        return res

    async def stop(self) -> None:
        self._stopping = True
        while self._inflight:
            self._idle = asyncio.Event()
            await self._idle.wait()
