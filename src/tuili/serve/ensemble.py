"""Ensembles: ``ensemble_scheduling`` steps chaining models by tensor name.

Each step maps ensemble tensors to a model's inputs (``input_map``: model input -> ensemble
tensor) and its outputs back (``output_map``: model output -> ensemble tensor). A step runs as
soon as all its inputs exist, so independent steps run concurrently; each step is an ordinary
request to its model (validated, queued and batched with everyone else's requests).

Deadlines: an ensemble request's deadline (its ``timeout``, else the ensemble's ``slo_ms``) is
absolute: each step gets the time that is left, so the whole ensemble answers within it.

Aggregation policy (the ensemble's ``aggregation_policy`` parameter): ``all`` (the default) fails
the request when a step fails; ``partial`` answers at the deadline with what is there when steps
miss it (DeadlineExceededError, or still running at the deadline): the outputs of those steps, and
of every step that needed them, are left out and named in the response parameter
``missing_outputs`` (a comma-separated string; absent when nothing is missing). A request none of
whose outputs was produced fails with DeadlineExceededError. Any other error fails the request.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tuili.backends.base import config_parameter
from tuili.errors import ConfigError, DeadlineExceededError, InvalidInputError, KernelError, ModelNotFoundError, ServerBusyError
from tuili.serve.batching import slo_ns
from tuili.serve.outputs import conform
from tuili.serve.runner import Outputs, Runner

if TYPE_CHECKING:
    from tuili.serve.lifecycle import ModelLifecycle

log = logging.getLogger(__name__)

AGGREGATION_POLICIES = ("all", "partial")


def aggregation_policy(config) -> str:
    """The config's ``aggregation_policy``: "all" (default) or "partial"; only an ensemble has one."""
    raw = config_parameter(config, "aggregation_policy")
    if raw is None or raw == "":
        return "all"
    is_ensemble = config.platform == "ensemble" or config.HasField("ensemble_scheduling")
    if not is_ensemble:
        raise ConfigError(f"model {config.name!r}: parameter aggregation_policy applies to ensembles only (it says what "
                          f"to answer when a step misses its deadline); remove it")
    if raw not in AGGREGATION_POLICIES:
        raise ConfigError(f"model {config.name!r}: parameter aggregation_policy is {raw!r}; use \"all\" or \"partial\"")
    return raw


class PartialOutputs(dict):
    """An ensemble's outputs with some left out (aggregation_policy "partial"): ``missing`` names them."""

    def __init__(self, outputs: dict, missing: list[str]):
        super().__init__(outputs)
        self.missing = missing


class _Missed(Exception):
    """A step missed the deadline (partial policy)."""


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
        self.partial = aggregation_policy(config) == "partial"
        self.slo_ns = slo_ns(config)
        self._stopping = False

    @property
    def healthy(self) -> bool:
        return all(self.models.ready(model, version) for model, version, _, _ in self.steps)

    async def enqueue(self, feeds: dict, batch: int, priority: int = 0, timeout_us: int = 0) -> Outputs:
        if self._stopping:
            raise ServerBusyError(f"ensemble {self.name!r} is unloading; retry the request")
        if timeout_us < 0:
            raise InvalidInputError(f"request to ensemble {self.name!r}: timeout {timeout_us} is negative; give microseconds >= 0")
        budget_ns = timeout_us * 1000 or self.slo_ns
        deadline = time.monotonic_ns() + budget_ns if budget_ns else 0
        self._accepted()
        try:
            pool = dict(feeds)
            pending = list(range(len(self.steps)))
            missed: list[int] = []
            while pending:
                ready = [i for i in pending if all(t in pool for t in self.steps[i][2].values())]
                if not ready:
                    if missed:  # what is left needs tensors of the steps that missed the deadline
                        break
                    missing = sorted({t for i in pending for t in self.steps[i][2].values() if t not in pool})
                    raise KernelError(f"ensemble {self.name!r}: no step can run; tensors {missing} are never produced")
                if len(ready) == 1:
                    try:
                        results = [await self._step(ready[0], pool, priority, deadline)]
                    except _Missed as e:
                        results = [e]
                else:
                    results = await asyncio.gather(*(self._step(i, pool, priority, deadline) for i in ready),
                                                   return_exceptions=True)
                for i, res in zip(ready, results):
                    pending.remove(i)
                    if isinstance(res, _Missed):
                        missed.append(i)
                    elif isinstance(res, BaseException):
                        raise res
                    else:
                        pool.update(res)
            self.stats.record_ensemble(batch)
            out = {n: pool[n] for n in self.outputs if n in pool}
            if not missed:
                return out
            lost = [n for n in self.outputs if n not in pool]
            steps = ", ".join(f"{i} ({self.steps[i][0]})" for i in sorted(missed))
            if not out:
                raise DeadlineExceededError(f"ensemble {self.name!r}: step(s) {steps} missed the deadline of "
                                            f"{budget_ns // 1000} us and no output could be produced; retry, or raise the timeout")
            log.debug("ensemble %s: step(s) %s missed the deadline; answering without %s", self.name, steps, lost)
            return PartialOutputs(out, lost)
        finally:
            self._answered()

    async def _step(self, i: int, pool: dict, priority: int, deadline: int) -> dict:
        model, version, input_map, output_map = self.steps[i]
        try:
            mv, watch = self.models.route(model, version)
        except ModelNotFoundError as e:  # Triton's words first, as for a request to the model itself
            raise self.models.unknown(model, version, f"ensemble {self.name!r} step {i} runs it: {e}") from None
        feeds = {model_in: pool[ens] for model_in, ens in input_map.items()}
        timeout_us = 0
        if deadline:
            left = deadline - time.monotonic_ns()
            if left <= 0:
                if self.partial:
                    raise _Missed()
                raise DeadlineExceededError(f"ensemble {self.name!r} step {i} (model {model!r}): the request's deadline "
                                            f"passed before the step could start; it did not run")
            timeout_us = -(-left // 1000)
        with mv.stats.request(), watch:
            try:
                run = mv.run(feeds, priority, timeout_us)
                out = await (asyncio.wait_for(run, timeout_us / 1e6) if self.partial and deadline else run)
            except InvalidInputError as e:
                raise InvalidInputError(f"ensemble {self.name!r} step {i} (model {model!r}): {e}") from None
            except (DeadlineExceededError, TimeoutError):
                if self.partial:
                    raise _Missed() from None
                raise
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
