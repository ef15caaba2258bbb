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
from dataclasses import dataclass

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from tuili.serve.core import InferenceServer
from tuili.serve.http_server import DEFAULT_MAX_BODY, create_app

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
    shutdown_grace_secs: float = 30.0
    ready_file: str | None = None  # written with the bound ports once everything listens (tests use it)


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


def _bound_port(server: uvicorn.Server) -> int:
    for s in server.servers:
        for sock in s.sockets:
            return sock.getsockname()[1]
    return 0


async def serve(opts: ServeOptions, stop_event: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass

    core = InferenceServer(opts.model_repository, opts.model_control_mode, opts.load_model, opts.repository_poll_secs)
    await core.start()

    def uv(app, port):
        cfg = uvicorn.Config(app, host=opts.host, port=port, log_level="warning", access_log=False, lifespan="off",
                             timeout_graceful_shutdown=opts.shutdown_grace_secs)
        return _Uvicorn(cfg)

    http = uv(create_app(core, opts.max_body_bytes), opts.http_port) if opts.http_port >= 0 else None
    metrics = uv(metrics_app(core), opts.metrics_port) if opts.metrics_port >= 0 else None
    servers = [s for s in (http, metrics) if s is not None]
    for s in servers:
        s.config.load()
        s.lifespan = s.config.lifespan_class(s.config)
        await s.startup()
        if s.should_exit:  # could not bind
            raise OSError(f"could not start the HTTP server on {opts.host}:{s.config.port}")
    grpc_server = None
    grpc_port = None
    if opts.grpc_port >= 0:
        try:
            from tuili.serve.grpc_server import start_grpc_server
        except ImportError as e:
            log.warning("gRPC endpoint not available: %s", e)
        else:
            grpc_server = await start_grpc_server(core, opts.host, opts.grpc_port)
            grpc_port = getattr(grpc_server, "bound_port", None) or opts.grpc_port
    ports = {"http": _bound_port(http) if http else 0, "grpc": grpc_port or 0, "metrics": _bound_port(metrics) if metrics else 0}
    log.info("tuili serve: HTTP on %s:%d, gRPC on %s:%s, metrics on %s:%d/metrics", opts.host, ports["http"], opts.host,
             ports["grpc"], opts.host, ports["metrics"])
    if opts.ready_file:
        import json

        tmp = opts.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(ports, f)
        os.replace(tmp, opts.ready_file)

    tasks = [asyncio.create_task(s.main_loop()) for s in servers]
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    log.info("tuili serve: shutting down (finishing requests in flight)")
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


def run(opts: ServeOptions) -> int:
    asyncio.run(serve(opts))
    return 0
