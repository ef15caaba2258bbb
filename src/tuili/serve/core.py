"""The protocol-independent inference server: the one facade the HTTP and gRPC adapters call.

    adapter -> InferenceServer.infer -> validation (request against the model's spec)
            -> ModelVersion.run -> its Runner (Scheduler: queues, dynamic batcher, instance threads;
               or EnsembleRunner) -> Backend.infer
            -> outputs (config dtype/dims, classification)

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

from tuili.errors import ConfigError, InvalidInputError, ModelNotFoundError, ServerBusyError
from tuili.serve.lifecycle import ModelLifecycle, ModelVersion
from tuili.serve.outputs import response_outputs
from tuili.serve.repository import ModelRepository
from tuili.serve.stats import Metrics
from tuili.serve.types import InferRequest, InferResponse
from tuili.serve.validation import int_param, request_feeds

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
]
CONTROL_MODES = ("none", "poll", "explicit")


def _server_version() -> str:
    try:
        from importlib.metadata import version

        return version("tuili")
    except Exception:  # not installed as a distribution
        return "0.1.0"


class InferenceServer:
    def __init__(self, model_repository: str | list[str], model_control_mode: str = "none",
                 load_models: list[str] | None = None, poll_secs: float = 15.0, metrics: Metrics | None = None):
        if model_control_mode not in CONTROL_MODES:
            raise ConfigError(f"--model-control-mode must be one of {', '.join(CONTROL_MODES)}, got {model_control_mode!r}")
        paths = [model_repository] if isinstance(model_repository, (str, os.PathLike)) else list(model_repository)
        self.repository = ModelRepository([str(p) for p in paths])
        self.metrics = metrics or Metrics()
        self.models = ModelLifecycle(self.repository, self.metrics)
        self.mode = model_control_mode
        self.load_models = list(load_models or [])
        self.poll_secs = poll_secs
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
        return self._started and not self._stopping and not self._draining

    def metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": self._version, "extensions": list(EXTENSIONS)}

    def get_model(self, name: str, version: str = "") -> ModelVersion:
        """The loaded version to run (``""`` = newest loaded); ModelNotFoundError otherwise."""
        return self.models.get(name, version)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.models.get(name, version)
            return not self._stopping
        except ModelNotFoundError:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict:
        mv = self.models.get(name, version)
        spec = mv.spec
        return {
            "name": name,
            "versions": [mv.version] if version else sorted(self.models.models[name].versions, key=int),
            "platform": mv.platform,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": spec.full_shape(s)} for s in spec.inputs.values()],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": spec.full_shape(s)} for s in spec.outputs.values()],
        }

    def model_config(self, name: str, version: str = ""):
        return self.models.get(name, version).config

    def model_statistics(self, name: str = "", version: str = "") -> dict:
        if name:
            mv = self.models.get(name, version)
            mvs = [mv] if version else self.models.models[name].sorted_versions()
        else:
            mvs = [mv for n in sorted(self.models.models) for mv in self.models.models[n].sorted_versions()]
        return {"model_stats": [m.stats.json() for m in mvs]}

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
            raise InvalidInputError(f"cannot load {name!r} from the files of the request without its config: "
                                    f"send the \"config\" parameter too")
        if not files and name not in self.repository.known():
            raise ModelNotFoundError(f"cannot load {name!r}: no such model directory in {', '.join(self.repository.paths)}")
        with self.repository.loading_from(name, files):
            await self.models.load(name, config_json=config)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """Unload ``name`` (and the ensembles that use it if asked). Explicit mode only."""
        self._check_explicit("unload", name)
        if name not in self.models.models and name not in self.repository.known():
            raise ModelNotFoundError(f"cannot unload {name!r}: unknown model")
        if unload_dependents:
            for ensemble in self.models.dependencies.dependents(name):
                await self.models.unload(ensemble)
                self.repository.release(ensemble)
        await self.models.unload(name)
        self.repository.release(name)

    # ------------------------------------------------------------------ inference
    async def infer(self, req: InferRequest) -> InferResponse:
        mv = self.models.get(req.model_name, req.model_version)
        with mv.stats.request():
            if self._stopping:
                raise ServerBusyError("the server is shutting down; retry on another instance")
            feeds = request_feeds(mv.name, mv.spec, req)
            params = req.parameters
            out = await mv.run(feeds, int_param(params, "priority"), int_param(params, "timeout"))
            outputs = response_outputs(mv.name, mv.spec, out, req.outputs)
        return InferResponse(mv.name, mv.version, req.id, outputs)
