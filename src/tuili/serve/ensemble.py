"""Ensembles: ``ensemble_scheduling`` steps chaining models by tensor name.

Each step maps ensemble tensors to a model's inputs (``input_map``: model input -> ensemble
tensor) and its outputs back (``output_map``: model output -> ensemble tensor). A step runs as
soon as all its inputs exist, so independent steps run concurrently; each step is an ordinary
request to its model (validated, queued and batched with everyone else's requests).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tuili.errors import InvalidInputError, KernelError, ModelNotFoundError, ServerBusyError
from tuili.serve.outputs import conform
from tuili.serve.runner import Outputs, Runner

if TYPE_CHECKING:
    from tuili.serve.lifecycle import ModelLifecycle

log = logging.getLogger(__name__)


class EnsembleRunner(Runner):
    """The Runner of an ensemble: its steps are requests to the models it names."""

    def __init__(self, models: ModelLifecycle, name: str, config, stats):
        super().__init__()
        self.models = models
        self.name = name
        self.stats = stats
        self.steps = [
            (st.model_name, str(st.model_version) if st.model_version > 0 else "", dict(st.input_map), dict(st.output_map))
            for st in config.ensemble_scheduling.step
        ]
        self.outputs = [o.name for o in config.output]
        self._stopping = False

    @property
    def healthy(self) -> bool:
        return all(self.models.ready(model, version) for model, version, _, _ in self.steps)

    async def enqueue(self, feeds: dict, batch: int, priority: int = 0, timeout_us: int = 0) -> Outputs:
        if self._stopping:
            raise ServerBusyError(f"ensemble {self.name!r} is unloading; retry the request")
        self._accepted()
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
            self._answered()

    async def _step(self, i: int, pool: dict, priority: int, timeout_us: int) -> dict:
        model, version, input_map, output_map = self.steps[i]
        try:
            mv = self.models.get(model, version)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"ensemble {self.name!r} step {i}: {e}") from None
        feeds = {model_in: pool[ens] for model_in, ens in input_map.items()}
        with mv.stats.request():
            try:
                out = await mv.run(feeds, priority, timeout_us)
            except InvalidInputError as e:
                raise InvalidInputError(f"ensemble {self.name!r} step {i} (model {model!r}): {e}") from None
        res = {}
        for model_out, ens in output_map.items():
            if model_out not in out:
                raise KernelError(f"ensemble {self.name!r} step {i}: model {model!r} produced no output {model_out!r}")
            arr = out[model_out]
            res[ens] = conform(mv.spec, model_out, arr) if model_out in mv.spec.outputs else arr
        return res

    async def stop(self) -> None:
        self._stopping = True
        await self.drain()
