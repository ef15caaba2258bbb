"""`tuili perf -m MODEL [-i http|grpc] [--concurrency-range 1:16:4 | --request-rate-range 50:200:50] ...`:
load a running server and measure it, in the manner of Triton's perf_analyzer."""
from __future__ import annotations

import argparse


def _range(text: str) -> list[float]:
    """perf_analyzer's START[:END[:STEP]] (linear), or a comma list."""
    try:
        if "," in text:
            return [float(v) for v in text.split(",")]
        parts = [float(v) for v in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected START[:END[:STEP]] or a comma list of numbers") from None
    if len(parts) > 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected START[:END[:STEP]]")
    start, end, step = (parts + [parts[0], 1.0][len(parts) - 1:])[:3]
    if step <= 0 or end < start:
        raise argparse.ArgumentTypeError(f"{text!r}: END must be >= START and STEP > 0")
    out, v = [], start
    while v <= end + 1e-9 and len(out) < 1000:
        out.append(v)
        v += step
    return out


def _shape(text: str) -> tuple[str, list[int]]:
    name, _, dims = text.rpartition(":")
    try:
        return name, [int(d) for d in dims.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected NAME:D1,D2,...") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="measure a running server's throughput and latency (like perf_analyzer)",
                       description="Sends the same pre-encoded request at each load level (concurrency: N requests "
                                   "in flight; request rate: a schedule), takes measurement windows until three in a "
                                   "row agree within --stability-percentage, and reports throughput, latency "
                                   "percentiles, errors, this client's CPU use and the server's own time split "
                                   "(statistics extension). Runs in its own process; 127.0.0.1 by default.")
    p.add_argument("-m", "--model", required=True, help="model name")
    p.add_argument("-x", "--model-version", default="", help="model version (default: the server's choice)")
    p.add_argument("-u", "--url", default="", help="HOST:PORT (default 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc)")
    p.add_argument("-i", "--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("-b", "--batch-size", type=int, default=1)
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency-range", type=_range, metavar="START[:END[:STEP]]",
                      help="requests kept in flight (default 1)")
    load.add_argument("--request-rate-range", type=_range, metavar="START[:END[:STEP]]",
                      help="requests per second sent on a schedule, whatever the answers do")
    p.add_argument("--request-distribution", choices=["constant", "poisson"], default="constant",
                   help="intervals between sends in request-rate mode")
    p.add_argument("--max-in-flight", type=int, default=256, help="request-rate mode: most requests outstanding at once")
    p.add_argument("--measurement-interval", type=float, default=5000, metavar="MS", help="window length (default 5000 ms)")
    p.add_argument("--stability-percentage", type=float, default=10, help="how close three windows must agree (default 10)")
    p.add_argument("--max-trials", type=int, default=10, help="windows per level before giving up on stability")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S", help="seconds of load before measuring each level")
    p.add_argument("--max-seconds", type=float, default=600, help="stop the sweep after this long (default 600)")
    p.add_argument("--input-data", default="random", help="random (default), zero, or an .npz with one array per input")
    p.add_argument("--shape", type=_shape, action="append", default=[], metavar="NAME:D1,D2",
                   help="dims of an input with variable dims, without the batch dimension (repeatable)")
    p.add_argument("--shared-memory", choices=["none", "system"], default="none",
                   help="system: inputs and outputs live in POSIX shared memory registered with the server")
    p.add_argument("--sequence-length", type=int, default=0, metavar="N",
                   help="send sequences of N requests (uint64 sequence_id, sequence_start on the first, "
                        "sequence_end on the last), one sequence at a time per in-flight slot")
    p.add_argument("--streaming", action="store_true",
                   help="gRPC ModelStreamInfer, one stream per in-flight slot (decoupled models: a request "
                        "completes with its final response)")
    p.add_argument("-f", "--csv", metavar="FILE", help="write the rows as CSV")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="plot latency against throughput")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tuili.bench.perf import report
    from tuili.bench.perf.load import Settings
    from tuili.bench.perf.run import Options, run_sync
    from tuili.errors import InvalidInputError

    for flag, value in (("--batch-size", args.batch_size), ("--max-trials", args.max_trials),
                        ("--measurement-interval", args.measurement_interval), ("--max-in-flight", args.max_in_flight)):
        if value <= 0:
            raise InvalidInputError(f"{flag} must be positive, got {value:g}")
    if args.request_rate_range:
        mode, levels = "rate", args.request_rate_range
    else:
        mode, levels = "concurrency", args.concurrency_range or [1.0]
        if any(v != int(v) for v in levels):
            raise InvalidInputError(f"--concurrency-range must give whole numbers, got {levels}")
    opts = Options(model=args.model, url=args.url, protocol=args.protocol, version=args.model_version,
                   batch=args.batch_size, shapes=dict(args.shape), input_data=args.input_data, mode=mode,
                   levels=levels, poisson=args.request_distribution == "poisson", shared_memory=args.shared_memory,
                   max_in_flight=args.max_in_flight, max_seconds=args.max_seconds,
                   sequence_length=args.sequence_length, streaming=args.streaming,
                   settings=Settings(window_s=args.measurement_interval / 1e3, stability=args.stability_percentage / 100,
                                     max_windows=args.max_trials, warmup_s=args.warmup))
    with tqdm(total=len(levels), desc="levels", unit="level") as bar:
        result = run_sync(opts, on_point=lambda _p: bar.update())
    print(report.markdown(result))
    if args.csv:
        report.write_csv(result, args.csv)
    if args.json:
        report.write_json(result, args.json)
    if args.plot:
        report.plot([result], args.plot)
    return 0
