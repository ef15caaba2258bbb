"""The protocol-independent inference server that the HTTP and gRPC adapters both call.

    adapter -> InferenceServer.infer -> per-model Scheduler (queues, dynamic batcher)
            -> instance thread -> Backend.infer

It owns the model repository (Triton layout), model control (none / poll / explicit),
request validation against the model config, the classification extension, statistics and
metrics. Everything here runs on one asyncio loop; blocking work (model loading, inference)
runs in threads.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np

from tuili import dtypes
from tuili.errors import ConfigError, InvalidInputError, KernelError, ModelLoadError, ModelNotFoundError, ServerBusyError, TuiliError
from tuili.model_config import ModelSpec
from tuili.serve.repository import ModelRepository
from tuili.serve.stats import Metrics, ModelStats
from tuili.serve.types import InferOutput, InferRequest, InferResponse

log = logging.getLogger(__name__)
_now = time.monotonic_ns

SERVER_NAME = "tuili"
EXTENSIONS = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "logging",
]
CONTROL_MODES = ("none", "poll", "explicit")


def _server_version() -> str:
    try:
        from importlib.metadata import version

        return version("tuili")
    except Exception:  # not installed as a distribution
        return "0.1.0"


class ModelVersion:
    """One loaded, servable version of a model."""

    __slots__ = ("name", "version", "config", "spec", "stats", "runner", "platform", "backend", "model_dir")

    def __init__(self, name, version, config, spec, stats, runner, platform, backend, model_dir):
        self.name, self.version, self.config, self.spec = name, version, config, spec
        self.stats, self.runner, self.platform, self.backend, self.model_dir = stats, runner, platform, backend, model_dir


class ModelEntry:
    """A model name: its loaded versions (newest first when resolving '') and its state."""

    def __init__(self, name: str):
        self.name = name
        self.versions: dict[str, ModelVersion] = {}
        self.default: ModelVersion | None = None
        self.state = "UNAVAILABLE"
        self.reason = "unloaded"
        self.lock = asyncio.Lock()
        self.signature = None  # what poll mode compares to notice changes
        self.failed_signature = None  # files of the last failed load (poll mode retries only after a change)
        self.dependents: set[str] = set()

    def set_versions(self, versions: dict[str, ModelVersion]) -> None:
        self.versions = versions
        self.default = versions[max(versions, key=int)] if versions else None


class InferenceServer:
    def __init__(self, model_repository: str | list[str], model_control_mode: str = "none",
                 load_models: list[str] | None = None, poll_secs: float = 15.0, metrics: Metrics | None = None):
        if model_control_mode not in CONTROL_MODES:
            raise ConfigError(f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, got {model_control_mode!r}")
        paths = [model_repository] if isinstance(model_repository, (str, os.PathLike)) else list(model_repository)
        self.repository = ModelRepository([str(p) for p in paths])
        self.mode = model_control_mode
        self.load_models = list(load_models or [])
        self.poll_secs = poll_secs
        self.metrics = metrics or Metrics()
        self._models: dict[str, ModelEntry] = {}
        self._started = False
        self._stopping = False
        self._draining = False
        self._poll_task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._version = _server_version()
        self._log_settings = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                              "log_verbose_level": 0, "log_format": "default"}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the startup models (all of them unless explicit mode) and start polling if asked."""
        self.loop = asyncio.get_running_loop()
        names = self.repository.scan()
        if self.mode == "explicit":
            wanted = names if "*" in self.load_models else self.load_models
        else:
            wanted = names
        for n in self.load_models:
            if n != "*" and n not in names:
                log.error("--load-model %s: no such model in the repository %s", n, ", ".join(self.repository.paths))
        await self._load_many([n for n in wanted if n in names])
        if self.mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_loop())
        self._started = True

    async def _load_many(self, names: list[str]) -> None:
        # Ensembles last, so their composing models are there first.
        order = sorted(names, key=lambda n: self.repository.is_ensemble(n))
        for n in order:
            try:
                await self._load(n)
            except TuiliError as e:
                log.error("failed to load model %r: %s", n, e)

    async def stop(self) -> None:
        """Stop taking requests, let queued ones finish, unload every model."""
        self._stopping = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except asyncio.CancelledError:
                pass
        # Ensembles first (they submit into their composing models).
        names = sorted(self._models, key=lambda n: not self._is_ensemble_loaded(n))
        for n in names:
            await self._unload(n, reason="server shutting down")

    def begin_shutdown(self) -> None:
        """Turn not-ready (load balancers stop sending) while requests in flight still finish."""
        self._draining = True

    def _is_ensemble_loaded(self, name: str) -> bool:
        e = self._models.get(name)
        return bool(e and e.default and e.default.platform == "ensemble")

    # ------------------------------------------------------------------ health / metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._started and not self._stopping and not self._draining

    def metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": self._version, "extensions": list(EXTENSIONS)}

    def get_model(self, name: str, version: str = "") -> ModelVersion:
        """The loaded version to run (``""`` = newest loaded); ModelNotFoundError otherwise."""
        entry = self._models.get(name)
        if entry is None or entry.default is None:
            if name in self._models or name in self.repository.known():
                raise ModelNotFoundError(f"model {name!r} is not ready (state {self._models[name].state if name in self._models else 'UNAVAILABLE'}: "
                                         f"{self._models[name].reason if name in self._models else 'unloaded'}); load it first")
            raise ModelNotFoundError(f"unknown model {name!r}; GET /v2/repository/index lists the models")
        if not version:
            return entry.default
        mv = entry.versions.get(str(version))
        if mv is None:
            raise ModelNotFoundError(
                f"model {name!r} has no ready version {version!r}; ready versions: {', '.join(sorted(entry.versions, key=int))}"
            )
        return mv

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get_model(name, version)
            return not self._stopping
        except ModelNotFoundError:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict:
        mv = self.get_model(name, version)
        spec = mv.spec
        entry = self._models[name]
        return {
            "name": name,
            "versions": sorted(entry.versions, key=int) if not version else [mv.version],
            "platform": mv.platform,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": spec.full_shape(s)} for s in spec.inputs.values()],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": spec.full_shape(s)} for s in spec.outputs.values()],
        }

    def log_settings(self, update: dict | None = None) -> dict:
        """Triton's logging extension: read (and optionally change) the server's log settings."""
        known = {"log_file": str, "log_info": bool, "log_warning": bool, "log_error": bool, "log_verbose_level": int, "log_format": str}
        for k, v in (update or {}).items():
            if k not in known:
                raise InvalidInputError(f"unknown log setting {k!r}; known: {', '.join(known)}")
            if known[k] is int and (not isinstance(v, int) or isinstance(v, bool)) or known[k] is bool and not isinstance(v, bool) \
                    or known[k] is str and not isinstance(v, str):
                raise InvalidInputError(f"log setting {k!r} must be a {known[k].__name__}, got {v!r}")
            if k == "log_file" and v:
                raise InvalidInputError("log_file is not supported: tuili logs to stderr")
            if k == "log_format" and v not in ("default", "ISO8601"):
                raise InvalidInputError(f"log_format must be 'default' or 'ISO8601', got {v!r}")
            self._log_settings[k] = v
        st = self._log_settings
        level = (logging.DEBUG if st["log_verbose_level"] > 0 else logging.INFO if st["log_info"]
                 else logging.WARNING if st["log_warning"] else logging.ERROR if st["log_error"] else logging.CRITICAL)
        logging.getLogger("tuili").setLevel(level)
        return dict(st)

    def model_config(self, name: str, version: str = ""):
        return self.get_model(name, version).config

    def model_statistics(self, name: str = "", version: str = "") -> dict:
        if name:
            mv = self.get_model(name, version)
            entry = self._models[name]
            mvs = [mv] if version else [entry.versions[v] for v in sorted(entry.versions, key=int)]
        else:
            mvs = [e.versions[v] for n in sorted(self._models) for e in [self._models[n]] for v in sorted(e.versions, key=int)]
        return {"model_stats": [m.stats.json() for m in mvs]}

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        out = []
        names = set(self.repository.scan()) | set(self._models)
        for n in sorted(names):
            e = self._models.get(n)
            if e is not None and e.versions:
                for v in sorted(e.versions, key=int):
                    out.append({"name": n, "version": v, "state": "READY", "reason": ""})
            elif not ready_only:
                state = e.state if e is not None else "UNAVAILABLE"
                reason = e.reason if e is not None else "unloaded"
                out.append({"name": n, "version": "", "state": state, "reason": reason})
        return out

    # ------------------------------------------------------------------ model control (API)
    async def load_model(self, name: str, config: str | None = None) -> None:
        """Repository extension load (explicit mode only). ``config``: a JSON model config overriding config.pbtxt."""
        if self.mode != "explicit":
            raise ConfigError(
                f"cannot load {name!r}: model control mode is {self.mode!r}; start the server with --model-control-mode explicit"
            )
        self.repository.scan()
        if name not in self.repository.known():
            raise ModelNotFoundError(f"cannot load {name!r}: no such model directory in {', '.join(self.repository.paths)}")
        await self._load(name, config_json=config)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        if self.mode != "explicit":
            raise ConfigError(
                f"cannot unload {name!r}: model control mode is {self.mode!r}; start the server with --model-control-mode explicit"
            )
        if name not in self._models and name not in self.repository.known():
            raise ModelNotFoundError(f"cannot unload {name!r}: unknown model")
        if unload_dependents:
            for dep in sorted(self._models.get(name, ModelEntry(name)).dependents):
                await self._unload(dep)
        await self._unload(name)

    # ------------------------------------------------------------------ loading
    async def _load(self, name: str, config_json: str | None = None, _chain: tuple[str, ...] = ()) -> None:
        """Load (or reload) every selected version of ``name``; an ensemble first loads the models it needs."""
        if name in _chain:
            raise ConfigError(f"ensembles form a cycle: {' -> '.join(_chain + (name,))}")
        entry = self._models.get(name)
        if entry is None:
            entry = self._models[name] = ModelEntry(name)
        async with entry.lock:
            prev_state = entry.state
            entry.state, entry.reason = "LOADING", ""
            try:
                plan = await asyncio.to_thread(self.repository.plan, name, config_json)
                if plan.is_ensemble:
                    for dep in plan.dependencies:
                        if dep == name or dep in _chain:
                            raise ConfigError(f"ensembles form a cycle: {' -> '.join(_chain + (name, dep))}")
                        if dep not in self._models or not self._models[dep].versions:
                            await self._load(dep, _chain=_chain + (name,))
                        self._models[dep].dependents.add(name)
                new_versions = await self._build_versions(plan)
            except TuiliError as e:
                entry.failed_signature = self.repository.signature(name)
                entry.state = "READY" if entry.versions else "UNAVAILABLE"
                entry.reason = "" if entry.versions else str(e)
                if not entry.versions and prev_state == "READY":
                    entry.reason = str(e)
                raise
            except Exception as e:  # a bug or an unexpected library error: report, never crash the server
                entry.failed_signature = self.repository.signature(name)
                entry.state = "READY" if entry.versions else "UNAVAILABLE"
                entry.reason = f"{type(e).__name__}: {e}"
                raise ModelLoadError(f"loading model {name!r} failed: {type(e).__name__}: {e}") from e
            old = entry.versions
            entry.set_versions(new_versions)
            entry.signature = plan.signature
            entry.failed_signature = None
            entry.state, entry.reason = "READY", ""
            log.info("model %s: versions %s ready (%s)", name, ", ".join(sorted(new_versions, key=int)), plan.platform)
        # Retire the replaced versions after the swap: new requests already go to the new ones.
        for v, mv in old.items():
            if new_versions.get(v) is not mv:
                await self._retire(mv)

    async def _build_versions(self, plan) -> dict[str, ModelVersion]:
        versions: dict[str, ModelVersion] = {}
        try:
            for v, vdir in plan.versions:
                if plan.is_ensemble:
                    from tuili.serve.ensemble import EnsembleRunner

                    spec = ModelSpec(plan.config, plan.model_dir)
                    stats = ModelStats(plan.name, v, self.metrics)
                    runner = EnsembleRunner(self, plan.name, plan.config, stats)
                    versions[v] = ModelVersion(plan.name, v, plan.config, spec, stats, runner, "ensemble", "", plan.model_dir)
                    continue
                config, instances = await asyncio.to_thread(self.repository.load_instances, plan, vdir)
                spec = ModelSpec(config, plan.model_dir)
                stats = ModelStats(plan.name, v, self.metrics)
                from tuili.serve.scheduler import Scheduler

                runner = Scheduler(plan.name, v, config, instances, stats, self.loop)
                versions[v] = ModelVersion(plan.name, v, config, spec, stats, runner, plan.platform, plan.backend, plan.model_dir)
        except BaseException:
            for mv in versions.values():
                await self._retire(mv)
            raise
        return versions

    async def _retire(self, mv: ModelVersion) -> None:
        try:
            await mv.runner.stop()
        finally:
            self.metrics.remove(mv.stats)

    async def _unload(self, name: str, reason: str = "unloaded") -> None:
        entry = self._models.get(name)
        if entry is None:
            self._models[name] = entry = ModelEntry(name)
            return
        async with entry.lock:
            old = entry.versions
            entry.set_versions({})
            entry.state, entry.reason = "UNLOADING", ""
            for mv in old.values():
                await self._retire(mv)
            entry.state, entry.reason = "UNAVAILABLE", reason
            entry.signature = None
        for e in self._models.values():
            e.dependents.discard(name)
        if old:
            log.info("model %s unloaded", name)

    # ------------------------------------------------------------------ poll mode
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Rescan: load new models and changed ones (new/removed versions, edited config), unload removed ones."""
        names = set(self.repository.scan())
        for n in sorted(set(self._models) - names):
            if self._models[n].versions:
                log.info("poll: model %s was removed from the repository; unloading it", n)
                await self._unload(n, reason="removed from the repository")
        changed = []
        for n in sorted(names):
            sig = await asyncio.to_thread(self.repository.signature, n)
            e = self._models.get(n)
            if e is None or e.signature != sig:
                if e is not None and e.failed_signature == sig:
                    continue  # failed before and nothing changed since
                changed.append(n)
        for n in sorted(changed, key=lambda n: self.repository.is_ensemble(n)):
            try:
                await self._load(n)
            except TuiliError as ex:
                log.error("poll: failed to load model %r: %s", n, ex)
                e = self._models.get(n)
                if e is not None:
                    e.failed_signature = await asyncio.to_thread(self.repository.signature, n)

    # ------------------------------------------------------------------ inference
    async def infer(self, req: InferRequest) -> InferResponse:
        mv = self.get_model(req.model_name, req.model_version)
        t0 = _now()
        try:
            if self._stopping:
                raise ServerBusyError("the server is shutting down; retry on another instance")
            feeds: dict[str, np.ndarray] = {}
            spec_inputs = mv.spec.inputs
            for inp in req.inputs:
                s = spec_inputs.get(inp.name)
                if s is None:
                    raise InvalidInputError(
                        f"model {mv.name!r} has no input {inp.name!r}; its inputs are {', '.join(spec_inputs) or '(none)'}"
                    )
                if inp.datatype != s.datatype:
                    raise InvalidInputError(
                        f"input {inp.name!r} of model {mv.name!r} has datatype {inp.datatype}, expected {s.datatype}"
                    )
                if inp.name in feeds:
                    raise InvalidInputError(f"input {inp.name!r} of model {mv.name!r} is given twice")
                feeds[inp.name] = inp.data
            requested = req.outputs
            if requested:
                for o in requested:
                    if o.name not in mv.spec.outputs:
                        raise InvalidInputError(
                            f"model {mv.name!r} has no output {o.name!r}; its outputs are {', '.join(mv.spec.outputs)}"
                        )
            params = req.parameters
            priority = _int_param(params, "priority")
            timeout = _int_param(params, "timeout")
            out = await self.run_model(mv, feeds, priority, timeout)
            outputs = self._outputs(mv, out, requested)
            mv.stats.record_request(True, _now() - t0)
            return InferResponse(mv.name, mv.version, req.id, outputs)
        except BaseException:
            mv.stats.record_request(False, _now() - t0)
            raise

    async def run_model(self, mv: ModelVersion, feeds: dict[str, np.ndarray], priority: int = 0, timeout_us: int = 0) -> dict[str, np.ndarray]:
        """Check ``feeds`` against the model's config and run it (used by ``infer`` and by ensemble steps)."""
        spec = mv.spec
        mb = spec.max_batch_size
        batch = 1
        model_feeds = {}
        for name, arr in feeds.items():
            s = spec.inputs.get(name)
            if s is None:
                raise InvalidInputError(f"model {mv.name!r} has no input {name!r}; its inputs are {', '.join(spec.inputs)}")
            if arr.dtype != s.np_dtype:
                if s.datatype == "BYTES" and arr.dtype.kind in "SU":
                    arr = arr.astype(object)
                else:
                    raise InvalidInputError(
                        f"input {name!r} of model {mv.name!r} has dtype {arr.dtype}, expected {s.datatype} ({s.np_dtype})"
                    )
            shape = arr.shape
            dims = s.dims
            if mb > 0:
                if len(shape) != len(dims) + 1:
                    raise InvalidInputError(
                        f"input {name!r} of model {mv.name!r} has shape {list(shape)}, expected {[-1] + list(dims)} "
                        f"(batch dimension first, max_batch_size {mb})"
                    )
                b = shape[0]
                if not 1 <= b <= mb:
                    raise InvalidInputError(
                        f"input {name!r} of model {mv.name!r} has batch size {b}; it must be between 1 and max_batch_size {mb}"
                    )
                if len(model_feeds) and b != batch:
                    raise InvalidInputError(f"inputs of model {mv.name!r} disagree on the batch size ({batch} vs {b} for {name!r})")
                batch = b
                item = shape[1:]
            else:
                if len(shape) != len(dims):
                    raise InvalidInputError(f"input {name!r} of model {mv.name!r} has shape {list(shape)}, expected {list(dims)}")
                item = shape
            for got, want in zip(item, dims):
                if want != -1 and got != want:
                    want_full = ([-1] if mb > 0 else []) + list(dims)
                    raise InvalidInputError(f"input {name!r} of model {mv.name!r} has shape {list(shape)}, expected {want_full}")
            if s.reshape is not None:
                arr = arr.reshape(([batch] if mb > 0 else []) + s.reshape)
            model_feeds[name] = arr
        missing = [n for n in spec.required_inputs if n not in model_feeds]
        if missing:
            raise InvalidInputError(f"model {mv.name!r} is missing input(s) {', '.join(repr(m) for m in missing)}")
        runner = mv.runner
        if mv.platform == "ensemble":
            out = await runner.run(model_feeds, batch, priority, timeout_us)
        else:
            out = await runner.submit(model_feeds, batch, priority, timeout_us)
        return out

    def _outputs(self, mv: ModelVersion, out: dict[str, np.ndarray], requested) -> list[InferOutput]:
        spec = mv.spec
        names = [(o.name, o.parameters) for o in requested] if requested else [(n, {}) for n in spec.outputs]
        result = []
        mb = spec.max_batch_size
        for name, params in names:
            arr = out.get(name)
            if arr is None:
                raise KernelError(f"model {mv.name!r} did not produce output {name!r} (it produced {', '.join(out) or 'nothing'})")
            s = spec.outputs[name]
            if not isinstance(arr, np.ndarray):
                arr = np.asarray(arr)
            if s.reshape is not None:
                lead = [arr.shape[0]] if mb > 0 and arr.ndim else []
                arr = arr.reshape(lead + [d if d != -1 else -1 for d in s.dims])
            if arr.dtype != s.np_dtype:
                if s.datatype == "BYTES":
                    arr = arr.astype(object)
                else:
                    arr = arr.astype(s.np_dtype)
            k = params.get("classification", params.get("class_count", 0)) if params else 0
            if k:
                arr = _classify(arr, int(k), s.labels, batched=mb > 0)
            result.append(InferOutput(name, dtypes.from_numpy(arr.dtype).to_v2() if arr.dtype != object else "BYTES", list(arr.shape), arr, {}))
        return result


def _int_param(params: dict, key: str) -> int:
    if not params or key not in params:
        return 0
    v = params[key]
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InvalidInputError(f"request parameter {key!r} must be an integer, got {v!r}") from None


def _classify(arr: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """Classification extension: top-k "value:index[:label]" strings per batch item."""
    if k < 0:
        raise InvalidInputError(f"class_count must be positive, got {k}")
    if arr.dtype == object or arr.dtype.kind in "SUb":
        raise InvalidInputError(f"classification needs a numeric output, this one is {arr.dtype}")
    rows = arr.reshape(arr.shape[0], -1) if batched and arr.ndim else arr.reshape(1, -1)
    k = min(k, rows.shape[1])
    idx = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty(idx.shape, dtype=object)
    for r in range(rows.shape[0]):
        for c in range(k):
            i = int(idx[r, c])
            v = rows[r, i]
            s = f"{float(v):f}:{i}"
            if labels is not None and i < len(labels):
                s += f":{labels[i]}"
            out[r, c] = s.encode()
    return out if batched and arr.ndim else out.reshape(k)
