"""``tuili serve``'s lifecycle: core + HTTP (uvicorn) + gRPC + metrics in one process, one asyncio loop.

SIGTERM/SIGINT start a graceful shutdown: the server turns not-ready, the HTTP and gRPC
endpoints stop accepting and finish the requests in flight, then every model is drained
and unloaded.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from tuili.backends.worker import DEFAULT_LOAD_TIMEOUT_S
from tuili.errors import ConfigError
from tuili.serve.core import SERVER_NAME, InferenceServer
from tuili.serve.http_server import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY, create_app
from tuili.serve.scheduler import DEFAULT_MAX_QUEUE_SIZE

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    model_repository: list[str]
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control_mode: str = "none"
    load_model: list[str] | None = None
    repository_poll_secs: float = 15.0
    max_body_bytes: int = DEFAULT_MAX_BODY
    body_timeout_secs: float = DEFAULT_BODY_TIMEOUT
    grpc_max_receive_bytes: int = DEFAULT_MAX_BODY
    shutdown_grace_secs: float = 30.0
    server_name: str = SERVER_NAME
    strict_readiness: bool = True
    strict_model_config: bool = False
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE  # per model whose config sets none; 0 = unbounded
    allow_paths_outside: bool = False  # trusted setups: model files may live outside their model directory
    exit_on_error: bool = False
    log_settings: dict | None = None  # Triton's logging extension settings to start with (log_verbose_level, ...)
    ready_file: str | None = None  # written with the bound ports once everything listens (tests use it)
    memory_budget: int | None = None  # bytes: place instances under it (serve/placement.py)
    cores: int | None = None  # place instances on this many cores (None with a budget: all)
    model_load_timeout_secs: float = DEFAULT_LOAD_TIMEOUT_S  # a worker loading its model longer is killed (0 = no limit)


class _Uvicorn(uvicorn.Server):
    """uvicorn server whose signals are handled by us (several servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


def metrics_app(core: InferenceServer) -> Starlette:
    async def metrics(request):
        return Response(core.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])


async def serve(opts: ServeOptions, stop_event: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass

    placement = None
    if opts.memory_budget is not None or opts.cores is not None:
        from tuili.serve.placement import check_cores, measure, pack

        cores = check_cores(opts.cores)
        measured = await asyncio.to_thread(measure, opts.model_repository, allow_paths_outside=opts.allow_paths_outside)
        placement = pack(measured, cores, opts.memory_budget)
        log.info("tuili serve: %s", placement.describe())
    core = InferenceServer(opts.model_repository, opts.model_control_mode, opts.load_model, opts.repository_poll_secs,
                           server_name=opts.server_name, strict_readiness=opts.strict_readiness,
                           strict_model_config=opts.strict_model_config, max_queue_size=opts.max_queue_size,
                           allow_paths_outside=opts.allow_paths_outside, placement=placement,
                           model_load_timeout_s=opts.model_load_timeout_secs)
    if opts.log_settings:
        core.log_settings(opts.log_settings)

    def uv(app, port, what):
        cfg = uvicorn.Config(app, host=opts.host, port=port, log_level="warning", access_log=False, lifespan="off",
                             timeout_graceful_shutdown=opts.shutdown_grace_secs)
        return _Uvicorn(cfg), _bind(opts.host, port, what)

    # Bind first: a busy port fails before minutes of model loading.
    app = create_app(core, opts.max_body_bytes, opts.body_timeout_secs)
    http = uv(app, opts.http_port, "--http-port") if opts.http_port >= 0 else None
    try:
        metrics = uv(metrics_app(core), opts.metrics_port, "--metrics-port") if opts.metrics_port >= 0 else None
    except BaseException:
        if http:
            http[1].close()
        raise
    servers: list[_Uvicorn] = []
    grpc_server = None
    tasks: list[asyncio.Task] = []
    stop_task = asyncio.create_task(stop.wait())
    try:
        ports = {"http": 0, "grpc": 0, "metrics": 0}
        for key, pair in (("http", http), ("metrics", metrics)):
            if pair is None:
                continue
            server, sock = pair
            server.config.load()
            server.lifespan = server.config.lifespan_class(server.config)
            await server.startup(sockets=[sock])
            servers.append(server)
            ports[key] = sock.getsockname()[1]
        # Health endpoints answer (live, not ready) while the models load.
        await core.start()
        failed = core.unready_models()
        if opts.exit_on_error and failed:
            raise ConfigError(f"--exit-on-error: model(s) {', '.join(failed)} failed to load (the log says why); "
                              f"fix them or start with --exit-on-error=false")
        if opts.grpc_port >= 0:
            from tuili.serve.grpc_server import start_grpc_server

            grpc_server = await start_grpc_server(core, opts.host, opts.grpc_port, max_receive_bytes=opts.grpc_max_receive_bytes)
            ports["grpc"] = getattr(grpc_server, "bound_port", None) or opts.grpc_port
        log.info("tuili serve: HTTP on %s:%d, gRPC on %s:%d, metrics on %s:%d/metrics", opts.host, ports["http"], opts.host,
                 ports["grpc"], opts.host, ports["metrics"])
        if opts.ready_file:
            import json

            tmp = opts.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(ports, f)
            os.replace(tmp, opts.ready_file)
        tasks = [asyncio.create_task(s.main_loop()) for s in servers]
        await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
        log.info("tuili serve: shutting down (finishing requests in flight)")
    finally:
        core.begin_shutdown()
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        shutdowns = [s.shutdown() for s in servers]
        if grpc_server is not None:
            shutdowns.append(grpc_server.stop(opts.shutdown_grace_secs))
        await asyncio.gather(*shutdowns, return_exceptions=True)
        await core.stop()
        stop_task.cancel()
        log.info("tuili serve: stopped")


def _bind(host: str, port: int, what: str) -> socket.socket:
    """Bind a listening socket ourselves, so a busy port is a clear error (not uvicorn's sys.exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pick another {what} (0 = any free port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _loop_factory():
    """uvloop when installed and not disabled (TUILI_UVLOOP=0): a faster event loop, less overhead per request."""
    if os.environ.get("TUILI_UVLOOP", "1") != "0":
        try:
            import uvloop

            return uvloop.new_event_loop
        except ImportError:
            pass
    return None


def run(opts: ServeOptions) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(opts))
    return 0
