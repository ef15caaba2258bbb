"""Calibration: data readers, and one streaming pass that feeds activation statistics to observers.

Readers yield feed dicts (input name -> batch, samples along the first axis):
  NpzReader(path, batch_size)          an .npz holding one array per model input
  ArrayReader(arrays, batch_size)      the same from a dict of arrays in memory
  IterableReader(feeds)                any iterable of feed dicts (a generator, a DataLoader's output)
  RandomReader(inputs, samples, ...)   generated data (normal or uniform) for the model's input specs
``reader_for(calib, inputs)`` turns what a user passes (a path, a dict, an iterable, a reader) into one
and checks it against the model's inputs: a name, rank, fixed dimension or dtype that does not match
is an error naming it, and an empty set is refused.

``collect(graph, observers, reader)`` runs the float model in onnxruntime with the observed tensors
exposed as extra outputs, one batch at a time, so memory is bounded by one batch's activations.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

import numpy as np

from tuili import dtypes
from tuili.errors import ConfigError, InvalidInputError
from tuili.ir import Graph

from .observers import Observer

log = logging.getLogger(__name__)

DEFAULT_BATCH = 16


@dataclass(frozen=True)
class InputSpec:
    """A model input as calibration data must match it: name, element type, shape (str/None = any size)."""

    name: str
    dtype: int  # ONNX element type
    shape: tuple | None

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(dtypes.from_onnx(self.dtype).numpy)


def model_inputs(graph: Graph) -> list[InputSpec]:
    """The inputs a feed must give (graph inputs that are not initializers)."""
    return [InputSpec(v.name, v.dtype, v.shape) for v in graph.inputs if not v.is_initializer]


class Reader:
    """An iterable of feed dicts; ``samples`` is the total when known (for progress bars)."""

    samples: int | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError


class ArrayReader(Reader):
    """Batches of ``batch_size`` samples sliced from equal-length arrays (one per input)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int = DEFAULT_BATCH, limit: int | None = None,
                 source: str = "calibration arrays"):
        if batch_size < 1:
            raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.source = source
        lengths = {k: (len(v) if v.ndim else 0) for k, v in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidInputError(f"{source}: inputs have different sample counts along axis 0: {lengths}; "
                                    "give every input the same number of samples")
        n = next(iter(lengths.values()), 0)
        self.samples = n if limit is None else min(n, int(limit))
        self.batch_size = int(batch_size)

    def __iter__(self):
        for i in range(0, self.samples, self.batch_size):
            j = min(i + self.batch_size, self.samples)
            yield {k: v[i:j] for k, v in self.arrays.items()}


class NpzReader(ArrayReader):
    """An .npz with one array per model input name, samples along the first axis."""

    def __init__(self, path: str | os.PathLike, batch_size: int = DEFAULT_BATCH, limit: int | None = None):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"calibration data {str(path)!r} is not a readable .npz file: {e}") from e
        super().__init__(arrays, batch_size, limit, source=f"calibration data {str(path)!r}")


class IterableReader(Reader):
    """Any iterable of feed dicts (re-iterated only if it is not an iterator)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], limit: int | None = None):
        self.feeds = feeds
        self.limit = limit

    def __iter__(self):
        it = iter(self.feeds)
        for feed in it if self.limit is None else islice(it, self.limit):
            yield {k: np.asarray(v) for k, v in feed.items()}


class RandomReader(Reader):
    """``samples`` generated samples for ``inputs``: float inputs from N(0, 1) (or U[low, high)),
    integer inputs (token ids) uniform in [0, ``int_high``); symbolic dimensions take ``dims``."""

    def __init__(self, inputs: list[InputSpec], samples: int = 64, batch_size: int = DEFAULT_BATCH, seed: int = 0,
                 distribution: str = "normal", low: float = 0.0, high: float = 1.0, int_high: int = 100,
                 dims: Mapping[str, int] | None = None):
        if distribution not in ("normal", "uniform"):
            raise ConfigError(f"generated calibration data: distribution {distribution!r} is not 'normal' or 'uniform'")
        self.inputs, self.samples, self.batch_size, self.seed = inputs, int(samples), int(batch_size), seed
        self.distribution, self.low, self.high, self.int_high = distribution, low, high, int_high
        self.dims = dict(dims or {})

    def _shape(self, spec: InputSpec, n: int) -> tuple[int, ...]:
        if spec.shape is None:
            raise ConfigError(f"input {spec.name!r} has no known shape: give calibration data instead of generated data")
        out = [n]
        for i, d in enumerate(spec.shape[1:], 1):
            if isinstance(d, int):
                out.append(d)
            elif d in self.dims:
                out.append(self.dims[d])
            else:
                raise ConfigError(f"input {spec.name!r}: dimension {i} is {d!r}; give its size with dims={{{d!r}: N}}")
        return tuple(out)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for i in range(0, self.samples, self.batch_size):
            n = min(self.batch_size, self.samples - i)
            feed = {}
            for spec in self.inputs:
                shape, dt = self._shape(spec, n), spec.numpy
                if np.issubdtype(dt, np.integer):
                    feed[spec.name] = rng.integers(0, self.int_high, shape).astype(dt)
                elif self.distribution == "normal":
                    feed[spec.name] = rng.standard_normal(shape).astype(dt)
                else:
                    feed[spec.name] = rng.uniform(self.low, self.high, shape).astype(dt)
            yield feed


def reader_for(calib, inputs: list[InputSpec], batch_size: int = DEFAULT_BATCH, limit: int | None = None) -> Reader:
    """A reader for ``calib``: a path to an .npz, a dict of arrays, a :class:`Reader`, or an iterable of
    feed dicts. Feeds are checked against ``inputs`` as they are read (:func:`check_feed`)."""
    if isinstance(calib, Reader):
        reader = calib
    elif isinstance(calib, str | os.PathLike):
        if not os.path.exists(calib):
            raise InvalidInputError(f"calibration data {str(calib)!r} does not exist; give an .npz with one array per "
                                    f"model input ({', '.join(s.name for s in inputs)})")
        reader = NpzReader(calib, batch_size, limit)
    elif isinstance(calib, Mapping):
        reader = ArrayReader(calib, batch_size, limit)
    elif isinstance(calib, Iterable):
        reader = IterableReader(calib, limit)
    else:
        raise ConfigError(f"calibration data of type {type(calib).__name__} is not supported: give an .npz path, a "
                          "dict of arrays, a Reader or an iterable of feed dicts")
    if reader.samples == 0:
        raise InvalidInputError("the calibration set is empty: give at least one sample per model input")
    if isinstance(reader, ArrayReader):  # arrays can be checked before any work starts
        check_feed(next(iter(reader)), inputs, getattr(reader, "source", "calibration data"))
    return reader


def check_feed(feed: Mapping[str, np.ndarray], inputs: list[InputSpec], where: str = "calibration data") -> None:
    """Raise InvalidInputError naming every input whose name, rank, fixed dimension or dtype is wrong."""
    expected = {s.name: s for s in inputs}
    problems = []
    missing = [n for n in expected if n not in feed]
    unknown = [n for n in feed if n not in expected]
    if missing:
        problems.append(f"missing input(s) {missing}")
    if unknown:
        problems.append(f"unknown input(s) {unknown} (the model's inputs are {list(expected)})")
    for name, arr in feed.items():
        spec = expected.get(name)
        if spec is None:
            continue
        arr = np.asarray(arr)
        if arr.dtype != spec.numpy:
            problems.append(f"input {name!r} is {arr.dtype}, the model expects {spec.numpy}")
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                problems.append(f"input {name!r} has shape {arr.shape}, the model expects rank {len(spec.shape)} "
                                f"{_dims(spec.shape)}")
            else:
                bad = [i for i, (a, d) in enumerate(zip(arr.shape, spec.shape, strict=True)) if isinstance(d, int) and a != d]
                if bad:
                    problems.append(f"input {name!r} has shape {arr.shape}, the model expects {_dims(spec.shape)} "
                                    f"(dimension {', '.join(map(str, bad))} differs)")
    if problems:
        raise InvalidInputError(f"{where} does not match the model's inputs: " + "; ".join(problems))


def _dims(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def collect(graph: Graph, observers: Mapping[str, Observer], reader: Reader,
            progress: Callable[[int], None] | None = None, threads: int | None = None) -> int:
    """Run ``graph`` (float) in onnxruntime over ``reader``, feeding each observed tensor's values of
    every batch to its observer. Returns the number of samples seen."""
    import onnxruntime as ort

    from tuili.passes import copy_graph

    inputs = model_inputs(graph)
    g = copy_graph(graph)
    missing = [n for n in observers if g.lookup(n) is None]
    if missing:
        raise ConfigError(f"cannot observe {missing}: no such tensor in graph {graph.name!r}")
    have = {v.name for v in g.outputs}
    g.outputs = g.outputs + [g.lookup(n) for n in observers if n not in have]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(g.to_proto().SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = list(observers)
    samples = 0
    where = getattr(reader, "source", "calibration data")
    for feed in reader:
        check_feed(feed, inputs, where)
        n = len(next(iter(feed.values()))) if feed else 0
        if n == 0:
            continue
        for name, value in zip(names, sess.run(names, dict(feed)), strict=True):
            observers[name].update(value)
        samples += n
        if progress is not None:
            progress(n)
    if samples == 0:
        raise InvalidInputError("the calibration set is empty: the reader yielded no samples")
    log.debug("calibrated %d tensors on %d samples", len(names), samples)
    return samples
