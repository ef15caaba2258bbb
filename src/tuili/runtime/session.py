"""InferenceSession: onnxruntime's calling convention over tuili's engine (or onnxruntime itself).

    sess = tuili.InferenceSession("model.onnx")            # engine="tuili"
    (logits,) = sess.run(None, {"input": x})
"""
from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from tuili import dtypes
from tuili.errors import ConfigError, InvalidInputError
from tuili.ir import Graph, Value, infer_shapes, load
from tuili.runtime import ort_api
from tuili.runtime.threads import Threads

if TYPE_CHECKING:
    from tuili.runtime.executor import StepHook
    from tuili.runtime.planner import Plan

log = logging.getLogger(__name__)

ENGINES = ("tuili", "onnxruntime")


@dataclass(frozen=True)
class NodeArg:
    """Like onnxruntime's NodeArg: name, shape (ints, symbolic names, None) and type string."""

    name: str
    shape: list[int | str | None] | None
    type: str

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of a tensor; None for other types and for tensors of unknown type."""
        try:
            return dtypes.from_name(self.type).to_numpy()
        except dtypes.UnknownDTypeError:
            return None


@dataclass(frozen=True)
class _Port:
    """A graph input or output as a session checks and describes it, detached from the graph: a
    session keeps these, not the graph (and through it every weight) it planned from."""

    name: str
    dtype: int | None
    shape: tuple | None
    type_proto: onnx.TypeProto | None

    @classmethod
    def of(cls, v: Value) -> _Port:
        return cls(v.name, v.dtype, v.shape, v.type_proto)

    @property
    def is_tensor(self) -> bool:
        tp = self.type_proto
        return tp is None or tp.HasField("tensor_type") or not tp.ListFields()


def _type_string(v: _Port) -> str:
    if v.type_proto is not None and not v.type_proto.HasField("tensor_type") and v.type_proto.ListFields():
        which = v.type_proto.WhichOneof("value")
        return f"{which.replace('_type', '')}(...)"
    return dtypes.from_onnx(v.dtype).ort_name if v.dtype else "tensor(undefined)"


def _node_arg(v: _Port) -> NodeArg:
    return NodeArg(v.name, None if v.shape is None else list(v.shape), _type_string(v))


# onnxruntime.SessionOptions fields the tuili engine maps onto its own settings; any other field set
# away from onnxruntime's default is refused by name
_ORT_LEVELS = {"ORT_DISABLE_ALL": 0, "ORT_ENABLE_BASIC": 1, "ORT_ENABLE_EXTENDED": 2, "ORT_ENABLE_ALL": 3}
_MAPPED_OPTIONS = ("intra_op_num_threads", "graph_optimization_level", "optimized_model_filepath",
                   "enable_profiling", "profile_file_prefix")


@dataclass(frozen=True)
class _Settings:
    """What a session does, from its arguments and onnxruntime's SessionOptions."""

    opt_level: int
    threads: int | None
    optimized_model_filepath: str = ""
    profile_prefix: str | None = None  # None: not profiling


def _check_providers(providers: Sequence[Any] | None, provider_options: Any) -> None:
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers or []]
    other = [n for n in names if n != "CPUExecutionProvider"]
    if other:
        raise ConfigError(f"providers {other} are not supported: tuili runs on the CPU (CPUExecutionProvider)")
    if provider_options or any(isinstance(p, (tuple, list)) and p[1] for p in providers or []):
        raise ConfigError("provider_options are not supported by tuili's InferenceSession; pass none")


DEFAULT_OPT_LEVEL = 2


def _settings(sess_options: Any, opt_level: int | None, threads: int | None) -> _Settings:
    """The tuili engine's settings: ``opt_level``/``threads`` and the SessionOptions fields that map to them
    (intra_op_num_threads -> threads, graph_optimization_level -> opt_level, optimized_model_filepath,
    enable_profiling with profile_file_prefix); any other field away from its default is refused."""
    if sess_options is None:
        return _Settings(DEFAULT_OPT_LEVEL if opt_level is None else opt_level, threads)
    default = type(sess_options)()
    fields = [n for n in dir(default) if not n.startswith("_") and not callable(getattr(default, n))]
    changed = {n for n in fields if getattr(sess_options, n) != getattr(default, n)}
    other = sorted(changed - set(_MAPPED_OPTIONS))
    if other:
        raise ConfigError(f"SessionOptions field(s) {', '.join(other)} have no equivalent in tuili's engine; leave "
                          f"them at onnxruntime's default or run InferenceSession(..., engine=\"onnxruntime\")")
    if "intra_op_num_threads" in changed:
        if threads is not None and threads != sess_options.intra_op_num_threads:
            raise ConfigError(f"threads={threads} and SessionOptions.intra_op_num_threads="
                              f"{sess_options.intra_op_num_threads} disagree; give one of them")
        threads = sess_options.intra_op_num_threads
    if "graph_optimization_level" in changed:
        level = _ORT_LEVELS[sess_options.graph_optimization_level.name]
        if opt_level is not None and opt_level != level:
            raise ConfigError(f"opt_level={opt_level} and SessionOptions.graph_optimization_level="
                              f"{sess_options.graph_optimization_level.name} (opt_level {level}) disagree; give one")
        opt_level = level
    prefix = sess_options.profile_file_prefix if sess_options.enable_profiling else None
    level = DEFAULT_OPT_LEVEL if opt_level is None else opt_level
    return _Settings(level, threads, sess_options.optimized_model_filepath, prefix)


class InferenceSession:
    """Load once, plan once, run many times. Thread-safe: ``run`` keeps no state between calls."""

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto | Graph, engine: str = "tuili",
                 opt_level: int | None = None, threads: int | None = None, *, precision: str = "fp32",
                 tune: bool = False,
                 sess_options: Any = None, providers: Sequence[Any] | None = None,
                 provider_options: Sequence[Any] | None = None):
        """``sess_options`` (onnxruntime.SessionOptions): on engine="onnxruntime" it is onnxruntime's own;
        on tuili's engine intra_op_num_threads, graph_optimization_level, optimized_model_filepath (the
        optimized graph is saved there) and enable_profiling (``end_profiling()`` writes a Chrome
        trace) take effect and any other field set away from its default is a ConfigError naming it.
        Settings added through SessionOptions methods (session config entries, initializers, custom
        op libraries) cannot be read back from it and are not checked.

        ``precision`` "fp32", "bf16" or "auto" (``runtime.precision``): in bf16, Conv and MatMul/Gemm with
        constant weights run on bf16 operands with float32 accumulation (oneDNN); inputs and outputs keep
        their dtypes. ``self.precision`` is what was chosen, ``self.bf16_nodes`` the bf16 nodes by op type.

        ``tune``: where a node has two kernels (numpy and torch's), time both at each new input shape
        and keep the faster, recorded per CPU in ``$TUILI_CACHE_DIR/tuning.json`` (``runtime.tuning``);
        without it, recorded choices are used and the torch kernel runs elsewhere.

        onnxruntime's positional form ``InferenceSession(path, sess_options, providers)`` works too."""
        engine, opt_level, threads, sess_options, providers, provider_options = ort_api.positional_arguments(
            engine, opt_level, threads, sess_options, providers, provider_options)
        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        _check_providers(providers, provider_options)
        if opt_level is not None and opt_level not in _ORT_LEVELS.values():
            raise ConfigError(f"opt_level must be 0, 1, 2 or 3, got {opt_level!r}")
        from tuili.runtime import int8 as int8_policy
        from tuili.runtime import precision as precision_policy

        if engine == "onnxruntime" and precision != "fp32":
            raise ConfigError(f"precision {precision!r} is a tuili engine option; engine='onnxruntime' runs fp32 only")
        if engine == "onnxruntime" and tune:
            raise ConfigError("tune=True is a tuili engine option; onnxruntime chooses its kernels itself")
        #: what this session runs at ("fp32" or "bf16"), why, and its bf16 nodes per op type
        self.precision_decision = precision_policy.decide(precision)
        self.precision = self.precision_decision.precision
        self.bf16_nodes: dict[str, int] = {}
        #: whether quantized nodes run on oneDNN's int8 kernels here (runtime.int8), and those nodes per op type
        self.int8_decision: int8_policy.Int8Decision | None = None
        self.int8_nodes: dict[str, int] = {}
        # onnxruntime takes its SessionOptions as they are (_ort_session)
        settings = _settings(None if engine == "onnxruntime" else sess_options, opt_level, threads)
        threads = settings.threads
        self.engine = engine
        graph = model if isinstance(model, Graph) else load(model)
        self.threads = threads
        self._trace: _Trace | None = None
        # BLAS, torch and numba threads of this session's runs, set together (runtime.threads)
        self._threads = Threads(threads if engine == "tuili" else None)
        self._metadata = ort_api.ModelMetadata.of(graph)
        self._feed_order = [v.name for v in graph.inputs]  # the plan takes its feeds in this order
        self._input_names = set(self._feed_order)
        if engine == "onnxruntime":
            self._ort = _ort_session(graph, threads, opt_level, sess_options)
            self._plan = None
            ports = self._ports(graph)
        else:
            # the planner pulls in every kernel: only the tuili engine imports it
            from tuili.runtime import executor
            from tuili.runtime.memory import trim_heap
            from tuili.runtime.planner import Planner, TuningHook

            self._run_plan = executor.run
            graph.validate()
            try:  # fills the shapes get_outputs() reports; the plan itself does not depend on it
                infer_shapes(graph)
            except Exception as e:  # noqa: BLE001
                log.warning("shape inference failed, output shapes stay as declared: %s", e)
            from tuili.passes import optimize_for_run

            ports = self._ports(graph)
            int8_decision = self.int8_decision = int8_policy.decide(graph)
            # a graph loaded here is optimized in place (no copy of its weights); the caller's never changes
            owned = graph is not model
            if owned:
                graph.decode_constants()
            plan_graph, self.optimization_report = optimize_for_run(
                graph, settings.opt_level, int8_policy.passes(int8_decision, settings.opt_level), in_place=owned)
            del graph
            if plan_graph is None:  # the optimizer failed half way through the loaded graph: load it again
                plan_graph = load(model)  # type: ignore[arg-type]
            if settings.optimized_model_filepath:
                plan_graph.save(settings.optimized_model_filepath)
            bf16 = precision_policy.planner_hook(self.precision_decision)
            int8 = int8_policy.planner_hook(int8_decision)
            tuning = TuningHook(bool(tune), self._threads.cap)
            self._plan = Planner(plan_graph, bf16=bf16, int8=int8, tuning=tuning).build()
            if int8 is not None:
                self.int8_nodes = dict(sorted(int8.counts.items()))
            if bf16 is not None:
                self.bf16_nodes = dict(sorted(bf16.counts.items()))
                log.debug("precision %s (%s): bf16 nodes %s", self.precision, self.precision_decision.reason,
                         self.bf16_nodes or "none")
            del plan_graph  # the plan holds what it runs on; the graph's values and nodes form cycles:
            gc.collect()  # free its weights now, not at the next automatic collection
            trim_heap()  # planning's temporaries (decoded and folded weights) go back to the OS
            self._const_roots = {id(_root(v)) for _, v in self._plan.consts if isinstance(v, np.ndarray)}
            if settings.profile_prefix is not None:
                self._trace = _Trace(settings.profile_prefix)
        self._inputs, self._outputs = ports
        self._input_index = {name: i for i, name in enumerate(self._feed_order)}
        self._output_index = {v.name: i for i, v in enumerate(self._outputs)}
        log.debug("session ready: %s, %d steps", engine, len(self._plan.steps) if self._plan else 0)

    @staticmethod
    def _ports(graph: Graph) -> tuple[list[_Port], list[_Port]]:
        """The graph's inputs to feed (initializers are not) and its outputs, detached from it."""
        return ([_Port.of(v) for v in graph.inputs if not v.is_initializer], [_Port.of(v) for v in graph.outputs])

    # ----- onnxruntime-compatible API
    def get_inputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._outputs]

    def get_modelmeta(self) -> ort_api.ModelMetadata:
        """onnxruntime's ModelMetadata fields (producer_name, graph_name, ..., custom_metadata_map)."""
        return self._metadata

    def io_binding(self) -> ort_api.IOBinding:
        return ort_api.IOBinding(self)

    def run_with_iobinding(self, iobinding: ort_api.IOBinding, run_options: Any = None) -> None:
        iobinding.run(run_options)

    def end_profiling(self) -> str:
        """Write the profile of the runs so far (SessionOptions.enable_profiling) as a Chrome trace,
        ``<profile_file_prefix>_<date>.json``, and return its path; "" when not profiling."""
        if self._plan is None:
            return self._ort.end_profiling()
        if self._trace is None:
            return ""
        path, self._trace = self._trace.write(), _Trace(self._trace.prefix)
        return path

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any], run_options: Any = None) -> list[Any]:
        """onnxruntime's ``run``: ``run_options`` is a tuili or onnxruntime RunOptions (see ort_api.RunOptions);
        a feed may be an array or an OrtValue-like object (one with ``.numpy()``)."""
        feeds = {k: ort_api.as_array(v) for k, v in input_feed.items()}
        settings = ort_api.run_settings(run_options)
        names = list(output_names) if output_names else [v.name for v in self._outputs]
        unknown = [n for n in names if n not in self._output_index]
        if unknown:
            raise InvalidInputError(f"requested output(s) {unknown} do not exist; the model's outputs are "
                                    f"{[v.name for v in self._outputs]}")
        if self._plan is None:
            return self._ort.run(names, self._check_feeds(feeds), ort_api.ort_run_options(run_options))
        ordered = self._ordered_feeds(feeds)
        if run_options is None:
            results = self._execute(self._plan, ordered)
        else:
            results = self._execute_with_options(self._plan, ordered, settings)
        # Kernels may return views (Reshape, Identity, ...): an output must never alias a feed or a
        # weight, or the caller's next write would change the other.
        protected = self._const_roots | {id(_root(v)) for v in ordered if isinstance(v, np.ndarray)}
        out = []
        for n in names:
            r = results[self._output_index[n]]
            if isinstance(r, np.ndarray) and (id(_root(r)) in protected or not r.flags.c_contiguous):
                r = np.ascontiguousarray(r) if not r.flags.c_contiguous else r.copy()  # oneDNN's are NHWC-strided
            out.append(r)
        return out

    # ----- the tuili engine
    def _execute_with_options(self, plan: Plan, ordered: list[Any], settings: ort_api.RunSettings) -> list[Any]:
        """A run under RunOptions: logged with its tag, stopped between steps once ``terminate`` is set."""
        settings.check_terminate("before it started")
        settings.log("start: %d steps", len(plan.steps))
        t0 = time.perf_counter()
        with self._trace.run() if self._trace is not None else nullcontext() as trace_hook:
            def hook(step, inputs: tuple, result: Any, seconds: float) -> None:
                if trace_hook is not None:
                    trace_hook(step, inputs, result, seconds)
                settings.check_terminate(f"after node {step.node_name or step.op_type!r}")

            results = self._execute(plan, ordered, hook)
        settings.log("done in %.3f ms", (time.perf_counter() - t0) * 1e3)
        return results

    @property
    def plan(self) -> Plan | None:
        """The executable plan (tuili engine; None on onnxruntime)."""
        return self._plan

    def _ordered_feeds(self, feeds: dict[str, Any]) -> list[Any]:
        """Checked feeds in graph-input order (None: not fed), as the plan takes them."""
        checked = self._check_feeds(feeds)
        return [checked.get(name) for name in self._feed_order]

    def _execute(self, plan: Plan, ordered: list[Any], hook: StepHook | None = None) -> list[Any]:
        """Run this session's ``plan`` on feeds in graph-input order, its kernels' threads limited."""
        if hook is None and self._trace is not None:
            with self._trace.run() as hook:
                return self._execute(plan, ordered, hook)
        with self._threads.limit():
            return self._run_plan(plan, ordered, hook=hook)

    # ----- feed validation: name, dtype, rank and fixed dims, consistent symbolic dims
    def _check_feeds(self, feeds: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in feeds if k not in self._input_names]
        if unknown:
            raise InvalidInputError(f"feed(s) {unknown} are not inputs of this model; its inputs are "
                                    f"{[v.name for v in self._inputs]}")
        out: dict[str, Any] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for v in self._inputs:
            if v.name not in feeds:
                if _is_optional(v):
                    continue
                raise InvalidInputError(f"input {v.name!r} is missing: expected {_describe_expected(v)}; "
                                        f"the model's inputs are {[x.name for x in self._inputs]}")
            out[v.name] = self._check_one(v, feeds[v.name], symbols)
        for name, value in feeds.items():
            out.setdefault(name, value)
        return out

    def _check_one(self, v: _Port, value: Any, symbols: dict) -> Any:
        if not v.is_tensor:
            return value
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        if v.dtype:
            want = dtypes.from_onnx(v.dtype).to_numpy()
            if arr.dtype != want and not (want == object and arr.dtype.kind in "OUS"):
                raise InvalidInputError(f"input {v.name!r} has dtype {arr.dtype}, expected {want} "
                                        f"({_describe_expected(v)}): convert it with .astype(np.{want})")
        if v.shape is not None:
            if arr.ndim != len(v.shape):
                raise InvalidInputError(f"input {v.name!r} has shape {list(arr.shape)} (rank {arr.ndim}), "
                                        f"expected rank {len(v.shape)}: {_describe_expected(v)}")
            for axis, (want_dim, got) in enumerate(zip(v.shape, arr.shape)):
                if isinstance(want_dim, int) and want_dim != got:
                    raise InvalidInputError(f"input {v.name!r} has shape {list(arr.shape)}, expected "
                                            f"{_describe_expected(v)}: dimension {axis} must be {want_dim}")
                if isinstance(want_dim, str) and want_dim:
                    seen = symbols.setdefault(want_dim, (got, v.name))
                    if seen[0] != got:
                        raise InvalidInputError(
                            f"input {v.name!r} has {want_dim}={got} on axis {axis} but input {seen[1]!r} "
                            f"has {want_dim}={seen[0]}: inputs sharing a symbolic dimension must agree")
        return arr


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _is_optional(v: _Port) -> bool:
    tp = v.type_proto
    return tp is not None and tp.HasField("optional_type")


def _describe_expected(v: _Port) -> str:
    shape = "?" if v.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in v.shape) + "]"
    return f"{_type_string(v)} with shape {shape}"


def _ort_session(graph: Graph, threads: int | None, opt_level: int | None, sess_options: Any = None):
    """onnxruntime's own session; ``opt_level`` 0-3 picks its graph_optimization_level (None: its default)."""
    import onnxruntime as ort

    opts = sess_options if sess_options is not None else ort.SessionOptions()
    if opt_level is not None:
        want = next(ort.GraphOptimizationLevel.__members__[n] for n, v in _ORT_LEVELS.items() if v == opt_level)
        if sess_options is not None and opts.graph_optimization_level not in (want, type(opts)().graph_optimization_level):
            raise ConfigError(f"opt_level={opt_level} and SessionOptions.graph_optimization_level="
                              f"{opts.graph_optimization_level.name} disagree; give one of them")
        opts.graph_optimization_level = want
    if threads:
        if sess_options is not None and sess_options.intra_op_num_threads not in (0, threads):
            raise ConfigError(f"threads={threads} and SessionOptions.intra_op_num_threads="
                              f"{sess_options.intra_op_num_threads} disagree; give one of them")
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(graph.to_proto().SerializeToString(), opts, providers=["CPUExecutionProvider"])


class _Trace:
    """Per-step timings of profiled runs, written as a Chrome trace (chrome://tracing, Perfetto) in
    the layout onnxruntime's profiler writes: a "Session" event per run, a "Node" event per step."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.start_ns = time.perf_counter_ns()
        self.started = datetime.now()
        self.events: list[dict] = []

    @contextmanager
    def run(self):
        t0 = time.perf_counter_ns()
        tid = threading.get_ident()

        def hook(step, inputs: tuple, result: Any, seconds: float) -> None:
            end = time.perf_counter_ns()
            dur = int(seconds * 1e9)
            self._event("Node", f"{step.node_name or step.op_type}_kernel_time", end - dur, dur, tid,
                        {"op_name": step.op_type, "provider": "tuili"})

        yield hook
        self._event("Session", "model_run", t0, time.perf_counter_ns() - t0, tid, {})

    def _event(self, cat: str, name: str, start_ns: int, dur_ns: int, tid: int, args: dict) -> None:
        from tuili.runtime.profile import trace_event

        self.events.append(trace_event(cat, name, start_ns, dur_ns, self.start_ns, tid, args))

    def write(self) -> str:
        path = f"{self.prefix}_{self.started:%Y-%m-%d_%H-%M-%S}.json"
        with open(path, "w") as f:
            json.dump(self.events, f)
        return path
