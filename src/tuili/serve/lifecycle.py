"""Model lifecycle: which versions of which models are servable, and getting them there and back.

    Model          one model name: its servable versions and its state (the ModelState machine)
    Dependencies   which ensembles use which models, kept apart from the states
    ModelLifecycle load (ensembles load what they use first), unload, retire replaced versions,
                   follow the repository (poll mode)

A reload builds the new versions while the old ones serve, swaps them in, then retires the
replaced ones: requests in flight finish on the version they started on.

Instances run as threads of the server or each in a worker process (``instance_isolation``,
tuili.backends.worker); a loaded version whose workers are all down is listed UNAVAILABLE (with
the reason) until they are back, and ``ready`` says so.

``route`` picks the version that runs a request: the one it names, else the newest, or, for a
model with a canary release (serve/canary.py), the stable or the canary version by weight.
"""
from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import Awaitable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from tuili.backends.worker import DEFAULT_LOAD_TIMEOUT_S, ProcessInstance, execution_timeout_s, instance_isolation, load_timeout_s
from tuili.errors import ConfigError, ModelLoadError, ModelNotFoundError, TuiliError
from tuili.model_config import ModelSpec
from tuili.serve.batching import slo_ns
from tuili.serve.canary import Canary, CanarySettings, canary_settings
from tuili.serve.ensemble import EnsembleRunner, aggregation_policy
from tuili.serve.errors import clip
from tuili.serve.placement import Plan, placed_config
from tuili.serve.repository import LoadPlan, ModelRepository
from tuili.serve.runner import Outputs, Runner
from tuili.serve.scheduler import DEFAULT_MAX_QUEUE_SIZE, Scheduler
from tuili.serve.sequence import SequenceBatcher, SequenceFlags, SequenceSettings
from tuili.serve.stats import Metrics, ModelStats
from tuili.serve.streaming import ResponseStream, refuse_unary
from tuili.serve.validation import model_feeds

log = logging.getLogger(__name__)


class ModelState(enum.StrEnum):
    """Triton's model states, as the repository index reports them."""

    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"


# A failed reload of a model that still has versions goes back to READY.
_NEXT = {
    ModelState.UNAVAILABLE: {ModelState.LOADING, ModelState.UNLOADING},
    ModelState.LOADING: {ModelState.READY, ModelState.UNAVAILABLE},
    ModelState.READY: {ModelState.LOADING, ModelState.UNLOADING},
    ModelState.UNLOADING: {ModelState.UNAVAILABLE},
}


@dataclass(eq=False, slots=True)
class ModelVersion:
    """One loaded, servable version of a model."""

    name: str
    version: str
    config: object  # ModelConfig
    spec: ModelSpec
    stats: ModelStats
    runner: Runner
    platform: str
    backend: str
    model_dir: str

    @property
    def ready(self) -> bool:
        """Whether it can serve now (False while all its instance workers are down)."""
        return self.runner.healthy

    @property
    def decoupled(self) -> bool:
        """Zero or many responses per request (serve.streaming): only ``stream`` runs it."""
        return bool(self.config.model_transaction_policy.decoupled)

    async def run(self, feeds: dict[str, np.ndarray], priority: int = 0, timeout_us: int = 0,
                  sequence: SequenceFlags | None = None) -> Outputs:
        """Check ``feeds`` against the model's spec and run them (client requests and ensemble steps);
        ``sequence``: the request's correlation id and flags, for a model with sequence batching (others
        ignore it, as Triton does)."""
        if self.decoupled:
            raise refuse_unary(self.name)
        return await self.enqueue(feeds, priority, timeout_us, sequence)

    def enqueue(self, feeds: dict[str, np.ndarray], priority: int = 0, timeout_us: int = 0,
                sequence: SequenceFlags | None = None, stream: ResponseStream | None = None) -> Awaitable[Outputs]:
        checked, batch = model_feeds(self.name, self.spec, feeds)
        extra = {"stream": stream} if stream is not None else {}
        if self.runner.takes_sequences:
            extra["sequence"] = sequence
        return self.runner.enqueue(checked, batch, priority, timeout_us, **extra)


class Model:
    """A model name: its servable versions (the newest answers version ``""``) and its state."""

    def __init__(self, name: str):
        self.name = name
        self.versions: dict[str, ModelVersion] = {}
        self.default: ModelVersion | None = None
        self.state = ModelState.UNAVAILABLE
        self.reason = "unloaded"
        self.lock = asyncio.Lock()  # one load or unload at a time
        self.signature = None  # the files of the loaded versions (poll mode compares it)
        self.failed_signature = None  # the files of the last failed load (poll mode retries only after a change)
        self.canary: Canary | None = None  # a traffic split between two of its versions

    def move(self, state: ModelState, reason: str = "") -> None:
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"model {self.name!r}: {self.state} -> {state} is not a lifecycle transition")
        self.state, self.reason = state, reason

    def set_versions(self, versions: dict[str, ModelVersion]) -> None:
        self.versions = versions
        self.default = versions[max(versions, key=int)] if versions else None

    def sorted_versions(self) -> list[ModelVersion]:
        return [self.versions[v] for v in sorted(self.versions, key=int)]


class Dependencies:
    """Which models each ensemble runs (Triton's dependency graph, apart from the models' states)."""

    def __init__(self) -> None:
        self._uses: dict[str, frozenset[str]] = {}

    def set(self, ensemble: str, models: list[str]) -> None:
        self._uses[ensemble] = frozenset(models)

    def forget(self, ensemble: str) -> None:
        self._uses.pop(ensemble, None)

    def dependents(self, model: str) -> list[str]:
        """The ensembles that use ``model``, sorted."""
        return sorted(e for e, used in self._uses.items() if model in used)


class ModelLifecycle:
    def __init__(self, repository: ModelRepository, metrics: Metrics, max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
                 placement: Plan | None = None, load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S):
        """``max_queue_size``: the queue bound of models whose config sets none (0 = unbounded);
        ``placement``: the instance counts, cores and threads to load models with (serve/placement.py);
        ``load_timeout_s``: how long a worker process may take to load its model, for models whose config
        sets no ``load_timeout_ms`` (0 = no limit)."""
        self.repository = repository
        self.placement = placement
        self.load_timeout_s = load_timeout_s
        self.metrics = metrics
        self.max_queue_size = max_queue_size
        self.models: dict[str, Model] = {}
        self.dependencies = Dependencies()

    # ------------------------------------------------------------------ lookups
    def get(self, name: str, version: str = "") -> ModelVersion:
        """The servable version (``""`` = newest); ModelNotFoundError otherwise."""
        model = self.models.get(name)
        if model is None or model.default is None:
            if model is not None:
                raise ModelNotFoundError(f"model {name!r} is not ready (state {model.state}: {model.reason}); load it first")
            if name in self.repository.known():
                raise ModelNotFoundError(f"model {name!r} is not ready (state UNAVAILABLE: unloaded); load it first")
            raise ModelNotFoundError(f"unknown model {name!r}; GET /v2/repository/index lists the models")
        if not version:
            return model.default
        mv = model.versions.get(str(version))
        if mv is None:
            raise ModelNotFoundError(
                f"model {name!r} has no ready version {version!r}; ready versions: {', '.join(sorted(model.versions, key=int))}")
        return mv

    def route(self, name: str, version: str = "") -> tuple[ModelVersion, AbstractContextManager]:
        """(the version that runs a request for ``name``, a context that records the request's outcome for
        the model's canary split): a request naming a version bypasses the split."""
        if not version:
            model = self.models.get(name)
            if model is not None and model.canary is not None and model.versions:
                return model.canary.pick()
        return self.get(name, version), nullcontext()

    def unknown(self, name: str, version: str, hint: str) -> ModelNotFoundError:
        """The error for a request to a model (or version) that cannot serve: Triton's words first
        (clients match on them), then ``hint``, tuili's word on why and what to do."""
        model = self.models.get(name)
        quoted = f"'{clip(name)}'"
        if model is not None and model.default is not None and version:
            triton = f"Request for unknown model: {quoted} version {clip(str(version))} is not found"
        elif model is not None or name in self.repository.known():
            triton = f"Request for unknown model: {quoted} has no available versions"
        else:
            triton = f"Request for unknown model: {quoted} is not found"
        return ModelNotFoundError(f"{triton}; {hint}")

    def canary(self, name: str) -> Canary | None:
        model = self.models.get(name)
        return model.canary if model is not None else None

    def ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (``""`` = its newest version) is loaded and can serve now."""
        try:
            return self.get(name, version).ready
        except ModelNotFoundError:
            return False

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: one row per loaded version, one per model that has none."""
        out = []
        for name in sorted(set(self.repository.scan()) | set(self.models)):
            model = self.models.get(name)
            if model is not None and model.versions:
                for mv in model.sorted_versions():
                    if mv.ready:
                        out.append({"name": name, "version": mv.version, "state": ModelState.READY.value,
                                    "reason": model.reason})
                    elif not ready_only:
                        out.append({"name": name, "version": mv.version, "state": ModelState.UNAVAILABLE.value,
                                    "reason": "its instance worker processes are down and restarting"})
            elif not ready_only:
                state, reason = (model.state, model.reason) if model is not None else (ModelState.UNAVAILABLE, "unloaded")
                out.append({"name": name, "version": "", "state": state.value, "reason": reason})
        return out

    def is_ensemble(self, name: str) -> bool:
        model = self.models.get(name)
        return bool(model and model.default and model.default.platform == "ensemble")

    # ------------------------------------------------------------------ loading
    async def load_all(self, names: list[str]) -> None:
        """Load each model, ensembles last (their models are there first); a failure is logged, not raised."""
        for name in sorted(names, key=self.repository.is_ensemble):
            try:
                await self.load(name)
            except TuiliError as e:
                log.error("failed to load model %r: %s", name, e)

    async def load(self, name: str, config_json: str | None = None, _chain: tuple[str, ...] = ()) -> None:
        """Load (or reload) every selected version of ``name``; an ensemble first loads the models it uses."""
        if name in _chain:
            raise ConfigError(f"ensembles form a cycle: {' -> '.join(_chain + (name,))}")
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = Model(name)
        async with model.lock:
            model.move(ModelState.LOADING)
            try:
                plan = await asyncio.to_thread(self.repository.plan, name, config_json)
                split = _scheduling_parameters(plan)
                if plan.is_ensemble:
                    await self._load_dependencies(plan, _chain + (name,))
                new_versions = await self._build_versions(plan)
            except Exception as e:
                model.failed_signature = self.repository.signature(name)
                reason = str(e) if isinstance(e, TuiliError) else f"{type(e).__name__}: {e}"
                model.move(ModelState.READY if model.versions else ModelState.UNAVAILABLE, "" if model.versions else reason)
                if isinstance(e, TuiliError):
                    raise
                # a bug or an unexpected library error: reported, never crashes the server
                raise ModelLoadError(f"loading model {name!r} failed: {reason}") from e
            old = model.versions
            if model.canary is not None:
                model.canary.close()
            model.canary = self._canary(name, split, new_versions)
            model.set_versions(new_versions)
            model.signature, model.failed_signature = plan.signature, None
            model.move(ModelState.READY, "; ".join(plan.warnings))
            log.info("model %s: versions %s ready (%s)", name, ", ".join(sorted(new_versions, key=int)), plan.platform)
        # Retire the replaced versions after the swap: new requests already go to the new ones.
        for v, mv in old.items():
            if new_versions.get(v) is not mv:
                await self._retire(mv)

    def _canary(self, name: str, split: CanarySettings | None, versions: dict[str, ModelVersion]) -> Canary | None:
        if split is None:
            return None
        stable = max((v for v in versions if v != split.version), key=int)
        return Canary(name, split, versions[stable], versions[split.version], self.metrics.canary)

    async def _load_dependencies(self, plan: LoadPlan, chain: tuple[str, ...]) -> None:
        self.dependencies.set(plan.name, plan.dependencies)
        for dep in plan.dependencies:
            if dep in chain:
                raise ConfigError(f"ensembles form a cycle: {' -> '.join(chain + (dep,))}")
            if dep not in self.models or not self.models[dep].versions:
                await self.load(dep, _chain=chain)

    async def _build_versions(self, plan: LoadPlan) -> dict[str, ModelVersion]:
        loop = asyncio.get_running_loop()
        versions: dict[str, ModelVersion] = {}
        try:
            for v, vdir in plan.versions:
                if plan.is_ensemble:
                    config = plan.config
                    stats = ModelStats(plan.name, v, self.metrics)
                    runner: Runner = EnsembleRunner(self, plan.name, config, stats)
                else:
                    config, instances = await asyncio.to_thread(self._load_instances, plan, v, vdir)
                    stats = ModelStats(plan.name, v, self.metrics)  # registered only once the instances loaded
                    if config.HasField("sequence_batching"):
                        settings = SequenceSettings(config, plan.model_dir, plan.allow_paths_outside)
                        runner = SequenceBatcher(plan.name, v, config, instances, stats, loop, self.max_queue_size, settings)
                    else:
                        runner = Scheduler(plan.name, v, config, instances, stats, loop, self.max_queue_size)
                spec = ModelSpec(config, plan.model_dir, allow_paths_outside=plan.allow_paths_outside)
                versions[v] = ModelVersion(plan.name, v, config, spec, stats, runner,
                                           plan.platform, plan.backend, plan.model_dir)
        except BaseException:
            for mv in versions.values():
                await self._retire(mv)
            raise
        return versions

    def _load_instances(self, plan: LoadPlan, version: str, version_dir: str):
        """(completed config, instances) of one version, as threads or worker processes (blocking)."""
        isolation = instance_isolation(plan.config, plan.backend)
        cpus = None
        if self.placement is not None:
            config, cpus = placed_config(self.placement, plan.name, version, plan.backend, isolation, plan.config)
            plan = dataclasses.replace(plan, config=config)
        if isolation == "thread":
            return self.repository.load_instances(plan, version_dir)
        timeout_s, load_s = execution_timeout_s(plan.config), load_timeout_s(plan.config, self.load_timeout_s)
        return self.repository.load_instances(plan, version_dir, lambda name: ProcessInstance(name, timeout_s, cpus, load_s))

    async def _retire(self, mv: ModelVersion) -> None:
        try:
            await mv.runner.stop()
        finally:
            self.metrics.remove(mv.stats)

    # ------------------------------------------------------------------ unloading
    async def unload(self, name: str, reason: str = "unloaded") -> None:
        """Stop serving every version of ``name`` (requests in flight finish first)."""
        model = self.models.get(name)
        if model is None:
            self.models[name] = Model(name)
            return
        async with model.lock:
            old = model.versions
            model.set_versions({})
            if model.canary is not None:
                model.canary.close()
                model.canary = None
            model.move(ModelState.UNLOADING)
            for mv in old.values():
                await self._retire(mv)
            model.move(ModelState.UNAVAILABLE, reason)
            model.signature = None
        self.dependencies.forget(name)
        if old:
            log.info("model %s unloaded", name)

    async def unload_all(self, reason: str) -> None:
        """Unload everything, ensembles first (they run their models)."""
        for name in sorted(self.models, key=lambda n: not self.is_ensemble(n)):
            await self.unload(name, reason)

    # ------------------------------------------------------------------ poll mode
    async def follow_repository(self) -> None:
        """Rescan: load new models and changed ones (new/removed versions, edited config), unload removed ones."""
        names = set(self.repository.scan())
        for name in sorted(set(self.models) - names):
            if self.models[name].versions:
                log.info("poll: model %s was removed from the repository; unloading it", name)
                await self.unload(name, reason="removed from the repository")
        changed = []
        for name in sorted(names):
            sig = await asyncio.to_thread(self.repository.signature, name)
            model = self.models.get(name)
            if model is None or model.signature != sig:
                if model is not None and model.failed_signature == sig:
                    continue  # failed before and nothing changed since
                changed.append(name)
        for name in sorted(changed, key=self.repository.is_ensemble):
            try:
                await self.load(name)
            except TuiliError as e:
                log.error("poll: failed to load model %r: %s", name, e)
                model = self.models.get(name)
                if model is not None:
                    model.failed_signature = await asyncio.to_thread(self.repository.signature, name)


def _scheduling_parameters(plan: LoadPlan) -> CanarySettings | None:
    """Check the server's scheduling parameters against the model they are on (before any version loads):
    ``slo_ms``, ``aggregation_policy`` (ensembles only) and the canary's; returns the canary settings."""
    config = plan.config
    slo_ns(config)
    aggregation_policy(config)
    split = canary_settings(config)
    if config.HasField("sequence_batching") and config_has(config, "slo_ms"):
        raise ConfigError(f"model {plan.name!r}: parameter slo_ms is not implemented for sequence batching (a sequence's "
                          f"requests cannot be dropped or reordered); remove it")
    if split is None:
        return None
    why = ("an ensemble (route its models' canaries instead)" if plan.is_ensemble else
           "a sequence model (a sequence's requests must all run on one version)" if config.HasField("sequence_batching") else
           "a decoupled model" if config.model_transaction_policy.decoupled else "")
    if why:
        raise ConfigError(f"model {plan.name!r}: canary parameters are not implemented for {why}; remove them")
    loaded = [v for v, _ in plan.versions]
    if split.version not in loaded or len(loaded) < 2:
        raise ConfigError(f"model {plan.name!r}: canary_version {split.version} needs that version and a stable one "
                          f"loaded, but version_policy selects {', '.join(loaded)}; set version_policy to load both, e.g. "
                          f"version_policy: {{ specific: {{ versions: [1, {split.version}] }} }}")
    return split


def config_has(config, key: str) -> bool:
    return key in config.parameters and config.parameters[key].string_value != ""
