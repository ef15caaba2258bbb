"""`tuili serve`: the KServe V2 / Triton-compatible inference server."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a Triton-layout model repository over HTTP/gRPC (KServe V2), with Prometheus metrics",
        description="Serve a model repository (Triton layout) with the KServe V2 / Triton protocol: "
        "HTTP on --http-port, gRPC on --grpc-port, Prometheus metrics on --metrics-port/metrics.",
    )
    p.add_argument("--model-repository", action="append", required=True, metavar="DIR",
                   help="model repository directory (repeat for several)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (0 = any free port, -1 = off; default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 = any free port, -1 = off; default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (0 = any free port, -1 = off; default 8002)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                   help="none: load everything at start; poll: also rescan and apply changes; explicit: load/unload via the API")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="in explicit mode, load this model at start ('*' = all); repeatable")
    p.add_argument("--repository-poll-secs", type=float, default=15.0, help="poll interval in seconds (poll mode)")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024,
                   help="largest request body accepted over HTTP; larger bodies get 413 (default 64 MiB)")
    p.add_argument("--shutdown-grace-secs", type=float, default=30.0, help="how long shutdown waits for requests in flight")
    p.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from tuili.serve.server import ServeOptions, run

    opts = ServeOptions(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        load_model=args.load_model,
        repository_poll_secs=args.repository_poll_secs,
        max_body_bytes=args.max_body_bytes,
        shutdown_grace_secs=args.shutdown_grace_secs,
        ready_file=args.ready_file,
    )
    return run(opts)
