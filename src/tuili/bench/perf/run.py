"""One `tuili perf` run: describe the model, build the request once, sweep the load levels."""
from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tuili.bench.perf.load import Point, Settings, measure
from tuili.bench.perf.payload import ModelInputs, Payload, make_tensors, resolve_shapes, sequences
from tuili.bench.perf.targets import GrpcTarget, HttpTarget, SystemShm
from tuili.errors import InvalidInputError


@dataclass
class Options:
    model: str
    url: str = ""
    protocol: str = "http"
    version: str = ""
    batch: int = 1
    shapes: dict[str, list[int]] = field(default_factory=dict)
    input_data: str = "random"  # random | zero | path of an .npz
    mode: str = "concurrency"  # concurrency | rate
    levels: list[float] = field(default_factory=lambda: [1.0])
    poisson: bool = False
    shared_memory: str = "none"  # none | system
    sequence_length: int = 0  # > 0: requests go in sequences of this length (sequence_id/start/end)
    streaming: bool = False  # gRPC ModelStreamInfer (one stream per in-flight slot)
    max_in_flight: int = 256
    max_seconds: float = 600.0
    settings: Settings = field(default_factory=Settings)
    seed: int = 0


@dataclass
class Result:
    options: Options
    model: ModelInputs
    points: list[Point]
    payload_bytes: int
    stopped_early: str = ""


def _target(opts: Options):
    if opts.protocol == "http":
        return HttpTarget(opts.url or "127.0.0.1:8000")
    if opts.protocol == "grpc":
        return GrpcTarget(opts.url or "127.0.0.1:8001")
    raise InvalidInputError(f"unknown protocol {opts.protocol!r}: use http or grpc")


def _load_data(opts: Options) -> dict[str, np.ndarray] | None:
    if opts.input_data in ("random", "zero"):
        return None
    if not os.path.isfile(opts.input_data):
        raise InvalidInputError(f"--input-data {opts.input_data!r}: not 'random', 'zero' or an existing .npz file")
    with np.load(opts.input_data, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


async def run(opts: Options, on_point: Callable[[Point], None] | None = None) -> Result:
    if opts.mode not in ("concurrency", "rate"):
        raise InvalidInputError(f"unknown mode {opts.mode!r}: use concurrency or rate")
    if not opts.levels or any(v <= 0 for v in opts.levels):
        raise InvalidInputError(f"load levels must be positive, got {opts.levels}")
    if opts.streaming and opts.protocol != "grpc":
        raise InvalidInputError("--streaming is gRPC's ModelStreamInfer: use -i grpc")
    if opts.max_in_flight >= 1 << 16:
        raise InvalidInputError(f"--max-in-flight must be below 65536, got {opts.max_in_flight}")
    if opts.sequence_length < 0:
        raise InvalidInputError(f"--sequence-length must be positive, got {opts.sequence_length}")
    if opts.shared_memory not in ("none", "system"):
        raise InvalidInputError(f"--shared-memory {opts.shared_memory!r}: use none or system (there is no GPU for cuda)")
    data = _load_data(opts)
    target = _target(opts)
    shm = SystemShm(target, f"tuili_perf_{os.getpid()}")
    try:
        model = await target.model(opts.model, opts.version)
        shapes = resolve_shapes(model, opts.batch, opts.shapes)
        payload = Payload(model, make_tensors(model, shapes, opts.input_data, opts.seed, data), opts.batch)
        # over a stream a request is complete with its final response: ask for the flag even when the
        # model's last response carries no data (decoupled models), as perf_analyzer does
        base = {"triton_enable_empty_final_response": True} if opts.streaming else {}
        run_id = random.randrange(1, 2**19) << 44  # uint64 ids: run | level << 36 | sequence << 16 | slot
        probe = {"sequence_id": run_id, "sequence_start": True, "sequence_end": True} if opts.sequence_length else {}
        # one request first: the server accepts it? (and the outputs' sizes, for shared memory)
        outputs = await target.output_types(target.encode(payload, (base | probe) or None), opts.streaming)
        if opts.shared_memory == "system":
            await shm.place(payload, outputs)
        request = target.encode(payload, base or None)

        def requests(slot: int, level_index: int):
            """The requests one in-flight slot sends: the same bytes, or its own sequences (ids unique
            per run, level and slot, so no sequence of an earlier level is continued)."""
            if not opts.sequence_length:
                return itertools.repeat(request)
            first = run_id + (level_index << 36) + slot + 1
            return sequences(lambda params: target.encode(payload, base | params), first, 1 << 16, opts.sequence_length)

        def make_send(level_index: int):
            def send_for(slot: int):
                reqs = requests(slot, level_index)
                return target.stream_sender(reqs) if opts.streaming else target.sender(reqs)
            return send_for

        async def stats():
            return await target.stats(opts.model, opts.version)

        points: list[Point] = []
        stopped = ""
        t_end = time.monotonic() + opts.max_seconds
        for index, level in enumerate(opts.levels):
            if time.monotonic() > t_end:
                stopped = f"--max-seconds {opts.max_seconds:g} reached before level {level:g}"
                break
            point = await measure(opts.mode, level, opts.batch, make_send(index), opts.settings,
                                  stats, poisson=opts.poisson, max_in_flight=opts.max_in_flight, seed=opts.seed)
            points.append(point)
            if on_point:
                on_point(point)
        return Result(opts, model, points, payload.nbytes, stopped)
    finally:
        await shm.close()
        await target.close()


def run_sync(opts: Options, on_point: Callable[[Point], None] | None = None) -> Result:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(opts, on_point))
    return uvloop.run(run(opts, on_point))
