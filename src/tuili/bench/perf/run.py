"""One `tuili perf` run: describe the model, build the request once, sweep the load levels."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tuili.bench.perf.load import Point, Settings, measure
from tuili.bench.perf.payload import ModelInputs, Payload, make_tensors, resolve_shapes
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
    if opts.shared_memory not in ("none", "system"):
        raise InvalidInputError(f"--shared-memory {opts.shared_memory!r}: use none or system (there is no GPU for cuda)")
    data = _load_data(opts)
    target = _target(opts)
    shm = SystemShm(target, f"tuili_perf_{os.getpid()}")
    try:
        model = await target.model(opts.model, opts.version)
        shapes = resolve_shapes(model, opts.batch, opts.shapes)
        payload = Payload(model, make_tensors(model, shapes, opts.input_data, opts.seed, data), opts.batch)
        outputs = await target.output_types(target.encode(payload))  # also checks the request is accepted
        if opts.shared_memory == "system":
            await shm.place(payload, outputs)
        request = target.encode(payload)

        async def stats():
            return await target.stats(opts.model, opts.version)

        points: list[Point] = []
        stopped = ""
        t_end = time.monotonic() + opts.max_seconds
        for level in opts.levels:
            if time.monotonic() > t_end:
                stopped = f"--max-seconds {opts.max_seconds:g} reached before level {level:g}"
                break
            point = await measure(opts.mode, level, opts.batch, lambda _i: target.sender(request), opts.settings,
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
