"""The protocol-independent inference server: the one facade the HTTP and gRPC adapters call.

    adapter -> InferenceServer.infer -> validation (request against the model's spec)
            -> ModelVersion.run -> its Runner (Scheduler: queues, dynamic batcher, instance threads;
               or EnsembleRunner) -> Backend.infer
            -> outputs (config dtype/dims, classification)
    (inputs and outputs placed in system shared memory are read from / written into the client's
     registered regions around this: serve/shm.py)

The pieces live in their own modules: lifecycle (model states, load / unload / retire, ensemble
dependencies, poll mode), validation, outputs, runner, errors (one status table for both
protocols), stats. This class holds the server-wide things: the control mode, startup and
shutdown, health, metadata, statistics and the logging extension. Everything runs on one
asyncio loop; blocking work (model loading, inference) runs in threads.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager

from tuili.backends.worker import DEFAULT_LOAD_TIMEOUT_S
from tuili.errors import ConfigError, DeadlineExceededError, InvalidInputError, ModelNotFoundError, ServerBusyError, TuiliError
from tuili.serve.ensemble import PartialOutputs
from tuili.serve.errors import clip
from tuili.serve.lifecycle import ModelLifecycle, ModelVersion
from tuili.serve.outputs import response_outputs
from tuili.serve.placement import Plan
from tuili.serve.repository import LoadPlan, ModelRepository
from tuili.serve.scheduler import DEFAULT_MAX_QUEUE_SIZE
from tuili.serve.sequence import sequence_flags
from tuili.serve.shm import OFF_LOOP_BYTES, SharedMemoryRegistry, in_shared_memory
from tuili.serve.stats import Metrics
from tuili.serve.streaming import ResponseStream, StreamedResponse
from tuili.serve.types import InferRequest, InferResponse, RequestedOutput
from tuili.serve.validation import check_request, int_param, request_feeds

log = logging.getLogger(__name__)

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
    "system_shared_memory",
]
CONTROL_MODES = ("none", "poll", "explicit")


class StrictModelRepository(ModelRepository):
    """``--strict-model-config``: a model's config must declare its inputs and outputs itself;
    nothing is completed from the model file (Triton's strict mode)."""

    def plan(self, name: str, config_json: str | None = None) -> LoadPlan:
        plan = super().plan(name, config_json)
        c = plan.config
        if not plan.is_ensemble and not (len(c.input) and len(c.output)):
            raise ConfigError(f"model {name!r}: its config does not declare its inputs and outputs, and "
                              f"--strict-model-config is on; write them in {plan.model_dir}/config.pbtxt "
                              f"or start the server with --strict-model-config=false")
        return plan


def _quoted(name: str) -> str:
    """A model name as Triton's messages quote it."""
    return f"'{clip(name)}'"


def _server_version() -> str:
    try:
        from importlib.metadata import version

        return version("tuili")
    except Exception:  # not installed as a distribution
        return "0.1.0"


class InferenceServer:
    def __init__(self, model_repository: str | list[str], model_control_mode: str = "none",
                 load_models: list[str] | None = None, poll_secs: float = 15.0, metrics: Metrics | None = None, *,
                 server_name: str = SERVER_NAME, strict_readiness: bool = True, strict_model_config: bool = False,
                 max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, allow_paths_outside: bool = False,
                 placement: Plan | None = None, model_load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S):
        if model_control_mode not in CONTROL_MODES:
            raise ConfigError(f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, got {model_control_mode!r}")
        paths = [model_repository] if isinstance(model_repository, (str, os.PathLike)) else list(model_repository)
        repository_class = StrictModelRepository if strict_model_config else ModelRepository
        self.repository = repository_class([str(p) for p in paths], allow_paths_outside=allow_paths_outside)
        self.server_name = server_name
        self.strict_readiness = strict_readiness
        self._asked: set[str] = set()  # explicit mode: the models the server was asked to load (strict readiness)
        self.metrics = metrics or Metrics()
        self.models = ModelLifecycle(self.repository, self.metrics, max_queue_size, placement, model_load_timeout_s)
        self.mode = model_control_mode
        self.load_models = list(load_models or [])
        self.poll_secs = poll_secs
        self.shared_memory = SharedMemoryRegistry()  # the system shared-memory extension's regions
        self._started = False
        self._stopping = False
        self._draining = False
        self._poll_task: asyncio.Task | None = None
        self._version = _server_version()
        self._log_settings = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                              "log_verbose_level": 0, "log_format": "default"}

    # ------------------------------------------------------------------ startup and shutdown
    async def start(self) -> None:
        """Load the startup models (all of them unless explicit mode) and start polling if asked."""
        names = self.repository.scan()
        wanted = names if self.mode != "explicit" or "*" in self.load_models else self.load_models
        for n in self.load_models:
            if n != "*" and n not in names:
                log.error("--load-model %s: no such model in the repository %s", n, ", ".join(self.repository.paths))
        self._asked = {n for n in wanted if n in names}
        await self.models.load_all([n for n in wanted if n in names])
        if self.mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_loop())
        self._started = True

    async def stop(self) -> None:
        """Stop taking requests, let queued ones finish, unload every model."""
        self._stopping = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except asyncio.CancelledError:
                pass
        await self.models.unload_all(reason="server shutting down")
        self.shared_memory.unregister()

    def begin_shutdown(self) -> None:
        """Turn not-ready (load balancers stop sending) while requests in flight still finish."""
        self._draining = True

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            try:
                await self.models.follow_repository()
            except Exception:
                log.exception("repository poll failed")

    # ------------------------------------------------------------------ health / metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Up and not shutting down; with strict readiness (Triton's default) also every model the
        server was asked to load is ready: the repository's in modes none and poll, the startup
        ones and the loaded ones in explicit mode."""
        if not self._started or self._stopping or self._draining:
            return False
        return not self.strict_readiness or not self.unready_models()

    def unready_models(self) -> list[str]:
        """The models the server was asked to load that are not ready (failed, loading, down), sorted."""
        wanted = self._asked if self.mode == "explicit" else self.repository.known()
        return sorted(n for n in wanted if not self.model_ready(n))

    def metadata(self) -> dict:
        return {"name": self.server_name, "version": self._version, "extensions": list(EXTENSIONS)}

    def get_model(self, name: str, version: str = "") -> ModelVersion:
        """The loaded version to run (``""`` = newest loaded); ModelNotFoundError otherwise, whose
        message starts as Triton's does (clients match on it), then says what to do."""
        try:
            return self.models.get(name, version)
        except ModelNotFoundError as e:
            raise self.models.unknown(name, version, str(e)) from None

    def model_ready(self, name: str, version: str = "") -> bool:
        """Loaded and able to serve now (not while its instance workers are down and restarting)."""
        return not self._stopping and self.models.ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> dict:
        mv = self.get_model(name, version)
        spec = mv.spec
        return {
            "name": name,
            "versions": [mv.version] if version else sorted(self.models.models[name].versions, key=int),
            "platform": mv.platform,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": spec.full_shape(s)} for s in spec.inputs.values()],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": spec.full_shape(s)} for s in spec.outputs.values()],
        }

    def model_config(self, name: str, version: str = ""):
        return self.get_model(name, version).config

    def model_statistics(self, name: str = "", version: str = "") -> dict:
        if name:
            mv = self.get_model(name, version)
            mvs = [mv] if version else self.models.models[name].sorted_versions()
        else:
            mvs = [mv for n in sorted(self.models.models) for mv in self.models.models[n].sorted_versions()]
        return {"model_stats": [m.stats.json() for m in mvs]}

    def log_settings(self, update: dict | None = None) -> dict:
        """Triton's logging extension: read (and optionally change) the server's log settings."""
        known = {"log_file": str, "log_info": bool, "log_warning": bool, "log_error": bool, "log_verbose_level": int, "log_format": str}
        for k, v in (update or {}).items():
            if k not in known:
                raise InvalidInputError(f"unknown log setting {clip(repr(k))}; known: {', '.join(known)}")
            if known[k] is int and (not isinstance(v, int) or isinstance(v, bool)) or known[k] is bool and not isinstance(v, bool) \
                    or known[k] is str and not isinstance(v, str):
                raise InvalidInputError(f"log setting {k!r} must be a {known[k].__name__}, got {clip(repr(v))}")
            if k == "log_verbose_level" and not 0 <= v < 2**32:
                raise InvalidInputError(f"log_verbose_level must be between 0 and {2**32 - 1}, got {v}")
            if k == "log_file" and v:
                raise InvalidInputError("log_file is not supported: tuili logs to stderr")
            if k == "log_format" and v not in ("default", "ISO8601"):
                raise InvalidInputError(f"log_format must be 'default' or 'ISO8601', got {clip(repr(v))}")
        self._log_settings.update(update or {})
        st = self._log_settings
        level = (logging.DEBUG if st["log_verbose_level"] > 0 else logging.INFO if st["log_info"]
                 else logging.WARNING if st["log_warning"] else logging.ERROR if st["log_error"] else logging.CRITICAL)
        logging.getLogger("tuili").setLevel(level)
        if update and "log_format" in update:
            iso = st["log_format"] == "ISO8601"
            fmt = logging.Formatter(("%(asctime)s " if iso else "") + "%(levelname)s %(name)s: %(message)s",
                                    datefmt="%Y-%m-%dT%H:%M:%S%z" if iso else None)
            for handler in logging.getLogger().handlers:
                handler.setFormatter(fmt)
        return dict(st)

    # ------------------------------------------------------------------ model control (repository extension)
    def repository_index(self, ready_only: bool = False) -> list[dict]:
        return self.models.index(ready_only)

    def _check_explicit(self, what: str, name: str) -> None:
        if self.mode != "explicit":
            raise ConfigError(
                f"cannot {what} {name!r}: model control mode is {self.mode!r}; start the server with --model-control-mode explicit")

    async def load_model(self, name: str, config: str | None = None, files: dict[str, bytes] | None = None) -> None:
        """Load (or reload) ``name``; ``config``: a JSON model config overriding config.pbtxt; ``files``: the
        model's files sent with the request (path in the model directory -> content), which then need
        ``config`` and are written into a private temporary directory. Explicit mode only."""
        self._check_explicit("load", name)
        self.repository.scan()
        if files and config is None:
            raise InvalidInputError(f"failed to load {_quoted(name)}: the request sends files but no config: "
                                    f"send the \"config\" parameter too")
        if not files and name not in self.repository.known():
            raise ModelNotFoundError(f"failed to load {_quoted(name)}: no such model directory in {', '.join(self.repository.paths)}")
        self._asked.add(name)
        try:
            with self.repository.loading_from(name, files):
                await self.models.load(name, config_json=config)
        except TuiliError as e:  # Triton's words first: clients match on them; the class (and status) kept
            plain = next(c for c in type(e).__mro__ if c.__module__ == TuiliError.__module__)
            raise plain(f"failed to load {_quoted(name)}: {e}") from e

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """Unload ``name`` (and the ensembles that use it if asked). Explicit mode only."""
        self._check_explicit("unload", name)
        if name not in self.models.models and name not in self.repository.known():
            raise ModelNotFoundError(f"cannot unload {name!r}: unknown model")
        if unload_dependents:
            for ensemble in self.models.dependencies.dependents(name):
                self._asked.discard(ensemble)
                await self.models.unload(ensemble)
                self.repository.release(ensemble)
        self._asked.discard(name)
        await self.models.unload(name)
        self.repository.release(name)

    # ------------------------------------------------------------------ inference
    def route(self, name: str, version: str = "") -> tuple[ModelVersion, AbstractContextManager]:
        """The version that runs a request (a canary split picks one for requests naming none) and the
        context recording its outcome for the split; errors as ``get_model``."""
        self.get_model(name, version)  # Triton's error messages
        return self.models.route(name, version)

    async def infer(self, req: InferRequest) -> InferResponse:
        mv, watch = self.route(req.model_name, req.model_version)
        parameters = {}
        with mv.stats.request(), watch:
            if self._stopping:
                raise ServerBusyError("the server is shutting down; retry on another instance")
            check_request(req)
            if self.shared_memory.placed_bytes(req.inputs) > OFF_LOOP_BYTES:  # a large copy: off the event loop
                await asyncio.to_thread(self.shared_memory.read_inputs, req)
            else:
                self.shared_memory.read_inputs(req)
            destinations = self.shared_memory.destinations(req)
            feeds = request_feeds(mv.name, mv.spec, req)
            params = req.parameters
            priority, timeout = int_param(params, "priority"), int_param(params, "timeout")
            canary = None if req.model_version else self.models.canary(mv.name)
            shadow = canary.shadow(feeds, priority, timeout) if canary is not None else None
            out = await mv.run(feeds, priority, timeout, sequence_flags(params))
            if shadow is not None:
                canary.compare(shadow, out)
            requested = req.outputs
            if isinstance(out, PartialOutputs):  # an ensemble step missed the deadline (aggregation_policy partial)
                parameters["missing_outputs"] = ",".join(out.missing)
                wanted = requested or [RequestedOutput(n) for n in mv.spec.outputs]
                requested = [o for o in wanted if o.name not in out.missing]
                if not requested:
                    raise DeadlineExceededError(f"ensemble {mv.name!r}: the outputs asked for ({', '.join(o.name for o in wanted)}) "
                                                f"were not produced before the deadline; retry, or raise the timeout")
            outputs = response_outputs(mv.name, mv.spec, out, requested)
            if sum(d.size for d in destinations.values()) > OFF_LOOP_BYTES:  # the room the client gave them
                await asyncio.to_thread(self.shared_memory.write_outputs, destinations, outputs)
            else:
                self.shared_memory.write_outputs(destinations, outputs)
        return InferResponse(mv.name, mv.version, req.id, outputs, parameters)

    def is_decoupled(self, name: str, version: str = "") -> bool:
        return self.get_model(name, version).decoupled

    async def infer_stream(self, req: InferRequest) -> AsyncIterator[StreamedResponse]:
        """The responses of a decoupled model to ``req``, as they come (a model that is not decoupled gives
        its one response). Closing the iterator early cancels the request: the model's ``is_cancelled()``
        turns true and its further responses are dropped."""
        mv, _ = self.route(req.model_name, req.model_version)
        if not mv.decoupled:
            yield StreamedResponse(await self.infer(req), None, True)
            return
        if self._stopping:
            raise ServerBusyError("the server is shutting down; retry on another instance")
        check_request(req)
        if any(in_shared_memory(t.parameters) for t in [*req.inputs, *(req.outputs or ())]):
            raise InvalidInputError(f"model {req.model_name!r} is decoupled: its inputs and outputs cannot be in shared memory")
        feeds = request_feeds(mv.name, mv.spec, req)
        params = req.parameters
        stream = ResponseStream(asyncio.get_running_loop())
        fut = mv.enqueue(feeds, int_param(params, "priority"), int_param(params, "timeout"), sequence_flags(params), stream)
        fut.add_done_callback(lambda f: stream.end(None if f.cancelled() else f.exception()))
        final = False
        try:
            while not final:
                item = await stream.queue.get()
                final = item.final
                if item.error is not None:
                    yield StreamedResponse(None, item.error, final)
                elif item.outputs is not None:
                    try:
                        outputs = response_outputs(mv.name, mv.spec, item.outputs, req.outputs)
                    except TuiliError as e:
                        yield StreamedResponse(None, e, final)
                        continue
                    yield StreamedResponse(InferResponse(mv.name, mv.version, req.id, outputs), None, final)
                elif final:
                    yield StreamedResponse(None, None, True)
        finally:
            if not final:  # the client went away: the model sees is_cancelled(), a queued request leaves the queue
                stream.cancelled = True
                fut.cancel()
