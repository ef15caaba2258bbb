"""`tuili serve`: the KServe V2 / Triton-compatible inference server.

Triton's own server flags work where they mean something here (``--model-store``,
``--strict-readiness=false``, ``--log-verbose=1``, ``--exit-on-error``, ...; booleans take Triton's
``--flag=true|false`` form); its flags for features tuili does not have are refused by name,
with what to do instead.
"""
from __future__ import annotations

import argparse

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")

# Triton flags with no meaning here, and why (each is an error naming the flag).
_REFUSED = {
    ("--backend-directory", "--backend-config"): "tuili's backends are built in; choose one per model in its config.pbtxt",
    ("--repoagent-directory",): "repository agents are not supported",
    ("--cuda-memory-pool-byte-size", "--pinned-memory-pool-byte-size", "--min-supported-compute-capability",
     "--allow-gpu-metrics"): "tuili runs models on the CPU",
    ("--grpc-use-ssl", "--grpc-use-ssl-mutual", "--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert"):
        "TLS is not supported; terminate TLS in a proxy in front of the server",
    ("--trace-config", "--trace-file", "--trace-level", "--trace-rate", "--trace-count", "--trace-log-frequency"):
        "tracing is not supported; the statistics extension and the metrics time every stage",
    ("--rate-limit", "--rate-limit-resource"): "the rate limiter is not supported; use instance counts and queue policies",
    ("--response-cache-byte-size", "--cache-config", "--cache-directory"): "the response cache is not supported",
    ("--allow-sagemaker", "--sagemaker-port", "--sagemaker-safe-port-range", "--sagemaker-thread-count",
     "--allow-vertex-ai", "--vertex-ai-port", "--vertex-ai-thread-count", "--vertex-ai-default-model"):
        "only the KServe V2 HTTP and gRPC endpoints are served",
    ("--host-policy", "--model-namespacing", "--metrics-config", "--allow-cpu-metrics", "--metrics-interval-ms"):
        "not supported by tuili",
    ("--http-thread-count", "--grpc-infer-allocation-pool-size", "--buffer-manager-thread-count",
     "--model-load-thread-count", "--reuse-http-port", "--reuse-grpc-port", "--grpc-keepalive-time",
     "--grpc-keepalive-timeout", "--grpc-keepalive-permit-without-calls", "--grpc-http2-max-pings-without-data",
     "--grpc-http2-min-recv-ping-interval-without-data", "--grpc-http2-max-ping-strikes"):
        "tuili serves every endpoint from one event loop and does not expose this setting",
    ("--http-address", "--grpc-address", "--metrics-address"): "tuili binds every endpoint to one address: use --host",
    ("--log-file",): "tuili logs to stderr; redirect it to a file",
}


def parse_bool(text: str) -> bool:
    """Triton's boolean flag values."""
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _seconds(text: str, zero_ok: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 <= v < float("inf") if zero_ok else v > 0):
        raise argparse.ArgumentTypeError(f"expected a {'non-negative' if zero_ok else 'positive'} number of seconds, "
                                         f"got {text!r}")
    return v


def _positive_float(text: str) -> float:
    return _seconds(text, zero_ok=False)


def _non_negative_float(text: str) -> float:
    return _seconds(text, zero_ok=True)


class _Refuse(argparse.Action):
    """A Triton flag that means nothing here: an error naming it and saying why."""

    def __init__(self, option_strings, dest, reason: str = "", **kw):
        self.reason = reason
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is a Triton flag tuili does not implement: {self.reason}")


def _flag(p, *names: str, default: bool, help: str) -> None:
    """A boolean flag in Triton's form: ``--x`` (true), ``--x=true`` or ``--x false``."""
    p.add_argument(*names, type=parse_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a Triton-layout model repository over HTTP/gRPC (KServe V2), with Prometheus metrics",
        description="Serve a model repository (Triton layout) with the KServe V2 / Triton protocol: "
        "HTTP on --http-port, gRPC on --grpc-port, Prometheus metrics on --metrics-port/metrics. "
        "Triton's server flags are accepted where they mean something here.",
    )
    p.add_argument("--model-repository", "--model-store", action="append", required=True, metavar="DIR",
                   help="model repository directory (repeat for several; --model-store is Triton's alias)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (0 = any free port, -1 = off; default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 = any free port, -1 = off; default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (0 = any free port, -1 = off; default 8002)")
    _flag(p, "--allow-http", default=True, help="serve HTTP (false: as --http-port -1)")
    _flag(p, "--allow-grpc", default=True, help="serve gRPC (false: as --grpc-port -1)")
    _flag(p, "--allow-metrics", default=True, help="serve metrics (false: as --metrics-port -1)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                   help="none: load everything at start; poll: also rescan and apply changes; explicit: load/unload via the API")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="in explicit mode, load this model at start ('*' = all); repeatable")
    p.add_argument("--repository-poll-secs", type=float, default=15.0, help="poll interval in seconds (poll mode)")
    p.add_argument("--max-body-bytes", type=_non_negative, default=64 * 1024 * 1024,
                   help="largest request body accepted over HTTP, after decompression; larger bodies get 413 (default 64 MiB)")
    p.add_argument("--body-timeout-secs", type=_positive_float, default=60.0,
                   help="how long an HTTP request body may take to arrive; slower ones get 408 (default 60)")
    p.add_argument("--grpc-max-receive-bytes", type=_non_negative, default=64 * 1024 * 1024,
                   help="largest gRPC request accepted; larger ones get RESOURCE_EXHAUSTED (default 64 MiB)")
    p.add_argument("--shutdown-grace-secs", "--exit-timeout-secs", type=float, default=30.0,
                   help="how long shutdown waits for requests in flight (--exit-timeout-secs is Triton's name)")
    p.add_argument("--model-load-timeout-secs", type=_non_negative_float, default=None, metavar="SECS",
                   help="how long a model's worker process may take to load it (a python model's initialize) before it "
                        "is killed and the load fails; a model's load_timeout_ms parameter overrides it (default 600; "
                        "0 = no limit)")
    p.add_argument("--server-name", "--id", default="tuili",
                   help="the name server metadata reports (default tuili; --id is Triton's name)")
    _flag(p, "--strict-readiness", default=True,
          help="ready only when every model the server was asked to load is ready (default true, as Triton)")
    _flag(p, "--strict-model-config", default=False,
          help="models' configs must declare their inputs and outputs; nothing is completed from the model file")
    p.add_argument("--disable-auto-complete-config", dest="strict_model_config", action="store_const", const=True,
                   help="the same as --strict-model-config=true")
    p.add_argument("--max-queue-size", type=_non_negative, default=None,
                   help="queue bound per model and priority level for models whose config sets none; full queues "
                        "answer 503 at once (default 256; 0 = unbounded)")
    _flag(p, "--allow-paths-outside-repository", default=False,
          help="let configs and load requests name files outside their model's directory (trusted setups only)")
    _flag(p, "--exit-on-error", default=False, help="exit if a model fails to load at startup (default false)")
    p.add_argument("--log-verbose", type=_non_negative, default=0, metavar="LEVEL",
                   help="verbose logging level (0 = off; > 0 logs every request and debug messages)")
    _flag(p, "--log-info", default=True, help="log info messages")
    _flag(p, "--log-warning", default=True, help="log warnings")
    _flag(p, "--log-error", default=True, help="log errors")
    p.add_argument("--log-format", choices=["default", "ISO8601"], default="default", help="log line format")
    _placement_flags(p)
    p.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    for names, reason in _REFUSED.items():
        p.add_argument(*names, action=_Refuse, reason=reason, dest=argparse.SUPPRESS)
    p.set_defaults(func=_run)
    _add_plan_parser(subparsers)


def _memory_size(text: str) -> int:
    from tuili.errors import ConfigError
    from tuili.serve.placement import parse_bytes

    try:
        return parse_bytes(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cores(text: str) -> int:
    from tuili.errors import ConfigError
    from tuili.serve.placement import check_cores

    try:
        return check_cores(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of cores, got {text!r}") from None
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _placement_flags(p) -> None:
    p.add_argument("--memory-budget", type=_memory_size, default=None, metavar="SIZE",
                   help="place model instances within this much memory (e.g. 2G, 512M): replicas dropped, "
                        "largest first, then models refused (docs/serving.md, placement)")
    p.add_argument("--cores", type=_cores, default=None, metavar="N",
                   help="place model instances on this many cores: process instances pinned, engine threads "
                        "set to each instance's share (default with --memory-budget: all)")


def _add_plan_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="measure a model repository's instances and print their placement on cores under a memory budget",
        description="Measure each model version's memory and compute per request (cached per model file hash), "
        "pack the instances onto cores under --memory-budget / --cores, and print the plan without serving.")
    p.add_argument("repository", nargs="+", metavar="REPO", help="model repository directory (several allowed)")
    _placement_flags(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--no-cache", action="store_true", help="measure again even when the model files did not change")
    _flag(p, "--allow-paths-outside-repository", default=False,
          help="let configs name files outside their model's directory (trusted setups only)")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    import json
    import sys

    from tuili.serve.placement import check_cores, measure, pack

    measured = measure(args.repository, allow_paths_outside=args.allow_paths_outside_repository,
                       use_cache=not args.no_cache)
    plan = pack(measured, check_cores(args.cores), args.memory_budget)
    if args.json:
        out = plan.as_dict()
        out["measurements"] = [vars(m) for m in measured]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(_measurement_table(measured) + "\n" + plan.describe() + "\n")
    return 0


def _measurement_table(measured) -> str:
    rows = ["model/version        backend      isolation  count  instance MiB  first-extra MiB  process MiB  ms/request"]
    for m in measured:
        ms = f"{m.compute_s * 1e3:10.3f}" if m.compute_s is not None else "         -"
        rows.append(f"{m.model + '/' + m.version:20} {m.backend:12} {m.isolation:9} {m.count:6} "
                    f"{m.instance_bytes / 2**20:13.1f} {m.first_extra_bytes / 2**20:16.1f} {m.process_bytes / 2**20:12.1f} {ms}")
    return "\n".join(rows)


def _run(args) -> int:
    from tuili.serve.server import ServeOptions, run

    opts = ServeOptions(
        model_repository=args.model_repository,
        host=args.host,
        http_port=args.http_port if args.allow_http else -1,
        grpc_port=args.grpc_port if args.allow_grpc else -1,
        metrics_port=args.metrics_port if args.allow_metrics else -1,
        model_control_mode=args.model_control_mode,
        load_model=args.load_model,
        repository_poll_secs=args.repository_poll_secs,
        max_body_bytes=args.max_body_bytes,
        body_timeout_secs=args.body_timeout_secs,
        grpc_max_receive_bytes=args.grpc_max_receive_bytes,
        shutdown_grace_secs=args.shutdown_grace_secs,
        server_name=args.server_name,
        strict_readiness=args.strict_readiness,
        strict_model_config=args.strict_model_config,
        max_queue_size=ServeOptions.max_queue_size if args.max_queue_size is None else args.max_queue_size,
        allow_paths_outside=args.allow_paths_outside_repository,
        exit_on_error=args.exit_on_error,
        log_settings={"log_verbose_level": args.log_verbose or int(getattr(args, "verbose", False)), "log_info": args.log_info, "log_warning": args.log_warning,
                      "log_error": args.log_error, "log_format": args.log_format},
        ready_file=args.ready_file,
        memory_budget=args.memory_budget,
        cores=args.cores,
    )
    if args.model_load_timeout_secs is not None:  # else ServeOptions' default
        opts.model_load_timeout_secs = args.model_load_timeout_secs
    return run(opts)
