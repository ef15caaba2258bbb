"""tuili on Ray Serve: a model repository as one Ray Serve application.

    client (tritonclient, curl) ──HTTP, KServe V2──► Ray Serve's proxy (on every node)
        ──► V2Ingress replica: tuili's own HTTP adapter (serve.http_server.create_app) over RayCore
        ──► the model's deployment: ModelReplica replicas, each tuili's serving core
            (serve.core.InferenceServer: validation, queues, dynamic batcher, instances, backends)

One deployment per model: its replicas load the model (an ensemble also its steps) from the
repository path, which must be readable on every node (a shared volume, or the same path on each
machine). Replicas, autoscaling and the CPUs / memory each replica reserves come from the model's
``ray`` parameter (tuili.deploy.settings). The ingress parses and encodes the V2 protocol with the
very code `tuili serve` uses, so clients cannot tell the two apart; requests cross to a replica as
``InferRequest`` / ``InferResponse`` objects.

A replica that dies while running a request (node lost, process killed) costs that request one
retry on another replica, then a 503; every request is bounded by ``request_timeout_s`` (504), so
none hangs. Each replica carries its model files' revision (sizes and modification times), so
redeploying after the repository changed (``tuili ray serve`` again) is Ray Serve's rolling update:
new replicas start before old ones drain.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from tuili.deploy.settings import plan_deployment
from tuili.errors import (
    ConfigError,
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    ServerBusyError,
    TuiliError,
    WorkerDiedError,
)
from tuili.model_config import ModelConfig
from tuili.serve.core import EXTENSIONS, SERVER_NAME, InferenceServer
from tuili.serve.errors import clip
from tuili.serve.http_server import create_app
from tuili.serve.repository import ModelRepository
from tuili.serve.types import InferRequest, InferResponse

log = logging.getLogger(__name__)

DEFAULT_APP = "tuili"
INGRESS = "tuili-v2-ingress"  # the ingress deployment's name (models' deployments are named as the models)
# What the ingress serves of the server's extensions: no repository control, logging or shared memory
# (the model runs in another process, maybe on another node).
INGRESS_EXTENSIONS = [e for e in EXTENSIONS if not e.startswith(("model_repository", "logging", "system_shared_memory"))]
_REPLICA_GONE = (RayActorError, ReplicaUnavailableError)
# Ray Serve's logging for the proxies and replicas: no access log line per request (a few ms of CPU
# each through the proxy, the replicas and Ray's log monitor); tuili's own logs as usual.
LOGGING_CONFIG = {"enable_access_log": False}


@serve.deployment
class ModelReplica:
    """One replica of a model: tuili's serving core with this model (and an ensemble's steps) loaded."""

    async def __init__(self, repository: str, model: str, load_order: list[tuple[str, str | None]], revision: str = ""):
        self.model = model
        self.revision = revision  # changes with the model's files: a redeploy then rolls new replicas out
        self.core = InferenceServer(repository, "explicit", strict_readiness=False)
        await self.core.start()
        for name, config_json in load_order:
            await self.core.load_model(name, config_json)
        log.info("replica of model %s (revision %s) ready in process %d", model, revision, os.getpid())

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.core.infer(request)

    def snapshot(self) -> dict:
        """What the ingress answers health, metadata and config requests from, per version
        ("" = the default version), and this replica's statistics."""
        core, name = self.core, self.model
        versions = core.model_metadata(name)["versions"]
        return {"versions": {v: {"metadata": core.model_metadata(name, v), "config": core.model_config(name, v).SerializeToString(),
                                 "ready": core.model_ready(name, v)} for v in ["", *versions]},
                "statistics": core.model_statistics(name)["model_stats"]}

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def get_revision(self) -> str:
        return self.revision

    def check_health(self) -> None:
        """Ray's health check: a replica whose model is down (its workers restarting) is replaced."""
        if not self.core.model_ready(self.model):
            raise WorkerDiedError(f"model {self.model!r} is not ready in replica process {os.getpid()}")

    async def __del__(self):  # Ray Serve's graceful shutdown: let queued requests finish, unload
        await self.core.stop()


class _NoSharedMemory:
    """The shared-memory endpoints of the ingress: the model runs in another process, maybe on another
    node, so there is nothing to register; status lists no region."""

    def status(self, name: str = "") -> list:
        if name:
            raise InvalidInputError(f"Unable to find shared memory region: {name!r}; {self._why}")
        return []

    def register(self, name, *args) -> None:
        raise InvalidInputError(f"cannot register shared memory region {name!r}: {self._why}")

    def unregister(self, name: str = "") -> None:
        pass

    _why = "the Ray ingress does not support system shared memory (models run in other processes); send tensors in the request"


class RayCore:
    """The facade tuili's HTTP adapter calls (the subset of serve.core.InferenceServer it uses),
    answered by the model deployments: inference goes to a replica; health, metadata, configs
    and statistics are answered from snapshots refreshed every ``poll_s`` seconds (probes never
    fan out to the replicas)."""

    def __init__(self, handles: dict, *, request_timeout_s: float = 60.0, retries: int = 1, poll_s: float = 1.0,
                 server_name: str = SERVER_NAME):
        self.handles = handles
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.poll_s = poll_s
        self.server_name = server_name
        self.shared_memory = _NoSharedMemory()
        self._snapshots: dict[str, dict] = {}
        self._failed: set[str] = set()  # models whose last snapshot failed (logged once)
        self._poll_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ snapshots
    async def refresh(self) -> None:
        async def one(name, handle):
            try:
                async with asyncio.timeout(max(self.poll_s, 5.0)):
                    self._snapshots[name] = await handle.snapshot.remote()
            except Exception as e:  # no replica answers: the model is not ready
                was_ready = self._snapshots.pop(name, None) is not None
                if was_ready or name not in self._failed:
                    log.warning("model %s: no replica answers (%s: %s); not ready", name, type(e).__name__, e)
                self._failed.add(name)

        await asyncio.gather(*(one(n, h) for n, h in self.handles.items()))

    def start_polling(self) -> None:
        async def loop():
            while True:
                await asyncio.sleep(self.poll_s)
                await self.refresh()

        self._poll_task = asyncio.get_running_loop().create_task(loop())

    def _version(self, name: str, version: str) -> dict:
        self.get_model(name, version)
        snap = self._snapshots.get(name)
        if snap is None:  # Triton's words for a model without a ready version, then why
            raise ModelNotFoundError(f"Request for unknown model: '{name}' has no available versions; "
                                     f"no replica of it answers now (starting, or failing: see the replicas' logs)")
        entry = snap["versions"].get(version)
        if entry is None:
            raise ModelNotFoundError(f"Request for unknown model: '{name}' version {clip(version)} is not found; "
                                     f"the replicas serve version(s) {', '.join(v for v in snap['versions'] if v)}")
        return entry

    # ------------------------------------------------------------------ the facade
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return all(self.model_ready(n) for n in self.handles)

    def metadata(self) -> dict:
        return {"name": self.server_name, "version": "ray", "extensions": list(INGRESS_EXTENSIONS)}

    def get_model(self, name: str, version: str = ""):
        if name not in self.handles:
            raise ModelNotFoundError(f"Request for unknown model: '{clip(name)}' is not found; this Ray application serves "
                                     f"{', '.join(sorted(self.handles))}")
        return name

    def model_ready(self, name: str, version: str = "") -> bool:
        snap = self._snapshots.get(name)
        entry = snap and snap["versions"].get(version)
        return bool(entry and entry["ready"])

    def model_metadata(self, name: str, version: str = "") -> dict:
        return self._version(name, version)["metadata"]

    def model_config(self, name: str, version: str = ""):
        return ModelConfig.FromString(self._version(name, version)["config"])

    def model_statistics(self, name: str = "", version: str = "") -> dict:
        """One replica's statistics (each replica counts its own requests)."""
        names = [self.get_model(name)] if name else sorted(self.handles)
        stats = [s for n in names for s in (self._snapshots.get(n) or {}).get("statistics", [])
                 if not version or s.get("version") == version]
        return {"model_stats": stats}

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        rows = []
        for name in sorted(self.handles):
            snap = self._snapshots.get(name)
            versions = [v for v in (snap or {}).get("versions", {}) if v] or [""]
            for v in versions:
                ready = self.model_ready(name, v)
                if ready or not ready_only:
                    rows.append({"name": name, "version": v, "state": "READY" if ready else "UNAVAILABLE",
                                 "reason": "" if ready else "no ready replica"})
        return rows

    def log_settings(self, update: dict | None = None) -> dict:
        if update:
            raise InvalidInputError("the logging extension is not served through the Ray ingress; "
                                    "set the replicas' log level with Ray Serve's logging_config")
        return {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                "log_verbose_level": 0, "log_format": "default"}

    async def load_model(self, name: str, config=None, files=None) -> None:
        raise ConfigError(f"cannot load {name!r} through the Ray ingress: change the repository and run "
                          f"`tuili ray serve` again (Ray Serve rolls the update out)")

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        raise ConfigError(f"cannot unload {name!r} through the Ray ingress: redeploy without it")

    async def infer(self, req: InferRequest) -> InferResponse:
        handle = self.handles.get(req.model_name)
        if handle is None:
            self.get_model(req.model_name)
        for attempt in range(self.retries + 1):
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    return await handle.infer.remote(req)
            except RayTaskError as e:  # the replica raised: its own error, with its status
                raise (e.cause if isinstance(e.cause, TuiliError) else e) from None
            except _REPLICA_GONE as e:
                if attempt < self.retries:
                    log.warning("model %s: a replica died while running a request (%s); retrying on another",
                                req.model_name, type(e).__name__)
                    continue
                raise WorkerDiedError(f"model {req.model_name!r}: its Ray replica died while running the request "
                                      f"({type(e).__name__}); retry") from None
            except (BackPressureError, DeploymentUnavailableError) as e:
                raise ServerBusyError(f"model {req.model_name!r}: every Ray replica is busy or starting "
                                      f"({type(e).__name__}); retry later") from None
            except TimeoutError:
                raise DeadlineExceededError(f"model {req.model_name!r}: no answer from a Ray replica within "
                                            f"{self.request_timeout_s:g} s (the ingress's request_timeout_s)") from None
        raise AssertionError("unreachable")


@serve.deployment
@serve.ingress()
class V2Ingress:
    """The ingress: tuili's V2 HTTP adapter over a RayCore, served by Ray Serve's proxies; with
    ``grpc`` (host, port) also tuili's gRPC adapter over the same RayCore, served by this replica
    itself (Ray Serve's own gRPC proxy would need a servicer per method)."""

    async def __init__(self, handles: dict, request_timeout_s: float = 60.0, retries: int = 1,
                       grpc: tuple[str, int] | None = None):
        self.core = RayCore(handles, request_timeout_s=request_timeout_s, retries=retries)
        await self.core.refresh()
        self.core.start_polling()
        self.grpc_server = None
        if grpc is not None:
            from tuili.serve.grpc_server import start_grpc_server

            self.grpc_server = await start_grpc_server(self.core, *grpc)
            log.info("tuili on Ray: gRPC on %s:%d", grpc[0], self.grpc_server.bound_port)

    async def __del__(self):
        if self.grpc_server is not None:
            await self.grpc_server.stop(10)
        await super().__del__()  # Ray Serve's ASGI wrapper ends the app's lifespan

    def __serve_build_asgi_app__(self):
        return create_app(self.core)


def build_app(repository: str, models: list[str] | None = None, *, ingress_replicas: int = 1,
              request_timeout_s: float = 60.0, retries: int = 1, grpc: tuple[str, int] | None = None,
              measure_memory: bool = False):
    """The Ray Serve application of ``repository`` (every model, or ``models``): one deployment per
    model, named as the model, and the V2 ingress (INGRESS); ``grpc`` (host, port): the ingress
    also serves V2 gRPC there (one ingress replica then); ``measure_memory``: each model is loaded
    once here, in a fresh process, and its replicas reserve the memory measured
    (tuili.deploy.footprint) unless its ``ray`` block names ``memory``. Run it with ``serve.run(app, ...)``."""
    if grpc is not None and ingress_replicas != 1:
        raise ConfigError(f"the gRPC endpoint is served by the ingress replica itself: ask for one ingress "
                          f"replica, not {ingress_replicas}, or no gRPC port")
    repository = os.path.abspath(repository)
    repo = ModelRepository([repository])
    known = repo.scan()
    names = list(models or known)
    missing = [n for n in names if n not in known]
    if missing:
        raise ModelNotFoundError(f"model(s) {', '.join(missing)} not in the repository {repository} "
                                 f"(it has {', '.join(known) or 'none'})")
    if not names:
        raise ConfigError(f"the repository {repository} has no model to deploy")
    if INGRESS in names:
        raise ConfigError(f"a model may not be named {INGRESS!r} on Ray: that is the ingress deployment's name")
    bound = {}
    for name in names:
        d = plan_deployment(repository, name)
        if measure_memory and "memory" not in d.options["ray_actor_options"]:
            from tuili.deploy.footprint import replica_memory

            d.options["ray_actor_options"]["memory"] = replica_memory(repository, d.load_order)
            log.info("model %s: a replica holds %.0f MB (measured, with headroom)", name,
                     d.options["ray_actor_options"]["memory"] / 2**20)
        revision = hashlib.sha1(repr([repo.signature(n) for n, _ in d.load_order]).encode()).hexdigest()[:12]
        bound[name] = ModelReplica.options(name=name, **d.options).bind(repository, name, d.load_order, revision)
    # The ingress reserves no CPU (as Ray's own proxies): the models' replicas hold the reservations.
    return V2Ingress.options(name=INGRESS, num_replicas=ingress_replicas, ray_actor_options={"num_cpus": 0}) \
        .bind(bound, request_timeout_s, retries, grpc)


def deploy(repository: str, models: list[str] | None = None, *, address: str | None = "auto", app_name: str = DEFAULT_APP,
           route_prefix: str = "/", host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = -1,
           ingress_replicas: int = 1, request_timeout_s: float = 60.0, measure_memory: bool = False,
           wait: bool = True) -> None:
    """Deploy ``repository`` on the Ray cluster at ``address`` (None: start a local one) as the Serve
    application ``app_name`` (gRPC too when ``grpc_port`` >= 0); with ``wait``, serve until SIGINT /
    SIGTERM, then delete the application."""
    import signal
    import threading

    import ray

    app = build_app(repository, models, ingress_replicas=ingress_replicas, request_timeout_s=request_timeout_s,
                    grpc=(host, grpc_port) if grpc_port >= 0 else None, measure_memory=measure_memory)
    ray.init(address=address, log_to_driver=False)
    serve.start(http_options={"host": host, "port": http_port}, logging_config=LOGGING_CONFIG)
    serve.run(app, name=app_name, route_prefix=route_prefix, logging_config=LOGGING_CONFIG)
    log.info("tuili on Ray: application %r serves %s at http://%s:%d%s", app_name, os.path.abspath(repository), host,
             http_port, route_prefix)
    if not wait:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("tuili on Ray: deleting application %r", app_name)
    serve.delete(app_name)
