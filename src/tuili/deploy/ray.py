"""tuili on Ray Serve: a model repository as Ray Serve applications, one per model and one for the server.

    client (tritonclient, curl) ──HTTP, KServe V2──► Ray Serve's proxy (on every node)
        /v2/models/<model>/...  ──► the model's application: ModelReplica replicas, each tuili's
                                    serving core (serve.core.InferenceServer: validation, queues,
                                    dynamic batcher, instances, backends) behind tuili's own HTTP adapter
        everything else         ──► the server's application: V2Ingress, tuili's HTTP adapter over
                                    RayCore (health, metadata, index, statistics; unknown models;
                                    gRPC, whose requests cross to a replica as InferRequest objects)

An inference request goes from the proxy straight to a replica of its model: no ingress replica in
between (that hop cost as much CPU as the proxy itself; docs/scale-out.md). Ray's proxy routes by
the longest route prefix, so each model's application is mounted at ``<prefix>/v2/models/<model>``.

One deployment per model: its replicas load the model (an ensemble also its steps) from the
repository path, which must be readable on every node (a shared volume, or the same path on each
machine). Replicas, autoscaling and the CPUs / memory each replica reserves come from the model's
``ray`` parameter (tuili.deploy.settings). Both parse and encode the V2 protocol with the very code
`tuili serve` uses, so clients cannot tell the two apart.

A request bounded by the proxy's ``request_timeout_s`` never hangs: a replica that dies while
running it costs it a 500 from the proxy (through the server's ingress: one retry, then a 503).
Each replica carries its model files' revision (sizes and modification times), so redeploying
after the repository changed (``tuili ray serve`` again) is Ray Serve's rolling update: new
replicas start before old ones drain.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import NamedTuple

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


def model_route(route_prefix: str, model: str) -> str:
    """Where a model's application is mounted: its V2 paths under the server's prefix."""
    return f"{route_prefix.rstrip('/')}/v2/models/{model}"


def model_app_name(app_name: str, model: str) -> str:
    """The Serve application of ``model`` in the tuili application ``app_name``."""
    return f"{app_name}-{model}"


class _FullPaths:
    """ASGI: Ray mounts a model's application at its route prefix (root_path ``.../v2/models/<m>``);
    tuili's adapter routes on the V2 paths themselves, so only the server's own prefix stays."""

    def __init__(self, app, model: str):
        self.app, self.suffix = app, f"/v2/models/{model}"

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "root_path": scope.get("root_path", "").removesuffix(self.suffix)}
        await self.app(scope, receive, send)


@serve.deployment
@serve.ingress()
class ModelReplica:
    """One replica of a model: tuili's serving core with this model (and an ensemble's steps)
    loaded, answering its model's V2 HTTP paths itself (tuili's HTTP adapter) and InferRequests
    from the server's ingress (gRPC)."""

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

    def __serve_build_asgi_app__(self):
        return _FullPaths(create_app(self.core), self.model)

    async def __del__(self):  # Ray Serve's graceful shutdown: let queued requests finish, unload
        await self.core.stop()
        await super().__del__()  # Ray Serve's ASGI wrapper ends the app's lifespan


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
    """The server's ingress: tuili's V2 HTTP adapter over a RayCore (``apps``: model -> its Serve
    application), served by Ray Serve's proxies for every path no model's application takes; with
    ``grpc`` (host, port) also tuili's gRPC adapter over the same RayCore, served by this replica
    itself (Ray Serve's own gRPC proxy would need a servicer per method)."""

    async def __init__(self, apps: dict[str, str], request_timeout_s: float = 60.0, retries: int = 1,
                       grpc: tuple[str, int] | None = None):
        handles = {model: serve.get_deployment_handle(model, app_name=app) for model, app in apps.items()}
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


class ServeApp(NamedTuple):
    """One Serve application to run: ``serve.run(app, name=name, route_prefix=route_prefix)``."""
    name: str
    route_prefix: str
    app: object


def build_apps(repository: str, models: list[str] | None = None, *, app_name: str = DEFAULT_APP,
               route_prefix: str = "/", ingress_replicas: int = 1, request_timeout_s: float = 60.0,
               retries: int = 1, grpc: tuple[str, int] | None = None, measure_memory: bool = False) -> list[ServeApp]:
    """The Ray Serve applications of ``repository`` (every model, or ``models``): per model, one
    application (model_app_name) whose one deployment, named as the model, is its ingress at
    model_route; last, the server's application ``app_name`` at ``route_prefix`` (the V2Ingress,
    INGRESS). ``grpc`` (host, port): the server's ingress also serves V2 gRPC there (one ingress
    replica then); ``measure_memory``: each model is loaded once here, in a fresh process, and its
    replicas reserve the memory measured (tuili.deploy.footprint) unless its ``ray`` block names
    ``memory``. Run them in order with run_apps."""
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
    apps = []
    for name in names:
        d = plan_deployment(repository, name)
        if measure_memory and "memory" not in d.options["ray_actor_options"]:
            from tuili.deploy.footprint import replica_memory

            d.options["ray_actor_options"]["memory"] = replica_memory(repository, d.load_order)
            log.info("model %s: a replica holds %.0f MB (measured, with headroom)", name,
                     d.options["ray_actor_options"]["memory"] / 2**20)
        revision = hashlib.sha1(repr([repo.signature(n) for n, _ in d.load_order]).encode()).hexdigest()[:12]
        app = ModelReplica.options(name=name, **d.options).bind(repository, name, d.load_order, revision)
        apps.append(ServeApp(model_app_name(app_name, name), model_route(route_prefix, name), app))
    # The ingress reserves no CPU (as Ray's own proxies): the models' replicas hold the reservations.
    ingress = V2Ingress.options(name=INGRESS, num_replicas=ingress_replicas, ray_actor_options={"num_cpus": 0}) \
        .bind({name: model_app_name(app_name, name) for name in names}, request_timeout_s, retries, grpc)
    return [*apps, ServeApp(app_name, route_prefix, ingress)]


def run_apps(apps: list[ServeApp]) -> None:
    """Deploy (or update) the applications build_apps made, each once it is ready; the models'
    first, so the server's ingress finds them."""
    for a in apps:
        serve.run(a.app, name=a.name, route_prefix=a.route_prefix, logging_config=LOGGING_CONFIG)


def delete_apps(app_name: str = DEFAULT_APP) -> None:
    """Delete the server's application ``app_name`` and its models' applications."""
    for name in serve.status().applications:
        if name == app_name or name.startswith(f"{app_name}-"):
            serve.delete(name)


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

    apps = build_apps(repository, models, app_name=app_name, route_prefix=route_prefix, ingress_replicas=ingress_replicas,
                      request_timeout_s=request_timeout_s, grpc=(host, grpc_port) if grpc_port >= 0 else None,
                      measure_memory=measure_memory)
    ray.init(address=address, log_to_driver=False)
    serve.start(http_options={"host": host, "port": http_port, "request_timeout_s": request_timeout_s},
                logging_config=LOGGING_CONFIG)
    run_apps(apps)
    log.info("tuili on Ray: application %r serves %s at http://%s:%d%s", app_name, os.path.abspath(repository), host,
             http_port, route_prefix)
    if not wait:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("tuili on Ray: deleting application %r and its models'", app_name)
    delete_apps(app_name)
