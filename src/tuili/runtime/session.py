"""InferenceSession: onnxruntime's calling convention over tuili's engine (or onnxruntime itself).

    sess = tuili.InferenceSession("model.onnx")            # engine="tuili"
    (logits,) = sess.run(None, {"input": x})
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from tuili import dtypes
from tuili.errors import ConfigError, InvalidInputError
from tuili.ir import Graph, Value, infer_shapes, load

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


def _type_string(v: Value) -> str:
    if v.type_proto is not None and not v.type_proto.HasField("tensor_type") and v.type_proto.ListFields():
        which = v.type_proto.WhichOneof("value")
        return f"{which.replace('_type', '')}(...)"
    return dtypes.from_onnx(v.dtype).ort_name if v.dtype else "tensor(undefined)"


def _node_arg(v: Value) -> NodeArg:
    return NodeArg(v.name, None if v.shape is None else list(v.shape), _type_string(v))


def _check_ort_arguments(sess_options: Any, providers: Sequence[Any] | None, provider_options: Any) -> None:
    """onnxruntime's constructor arguments, accepted where tuili does what they ask and refused otherwise."""
    if sess_options is not None:
        raise ConfigError("sess_options (onnxruntime.SessionOptions) is not supported by tuili's InferenceSession; "
                          "use opt_level= for graph_optimization_level and threads= for intra_op_num_threads")
    names = [p[0] if isinstance(p, (tuple, list)) else p for p in providers or []]
    other = [n for n in names if n != "CPUExecutionProvider"]
    if other:
        raise ConfigError(f"providers {other} are not supported: tuili runs on the CPU (CPUExecutionProvider)")
    if provider_options or any(isinstance(p, (tuple, list)) and p[1] for p in providers or []):
        raise ConfigError("provider_options are not supported by tuili's InferenceSession; pass none")


class InferenceSession:
    """Load once, plan once, run many times. Thread-safe: ``run`` keeps no state between calls."""

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto | Graph, engine: str = "tuili",
                 opt_level: int = 2, threads: int | None = None, *, sess_options: Any = None,
                 providers: Sequence[Any] | None = None, provider_options: Sequence[Any] | None = None):
        if engine not in ENGINES:
            raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        _check_ort_arguments(sess_options, providers, provider_options)
        self.engine = engine
        self.graph = model if isinstance(model, Graph) else load(model)
        self.threads = threads
        self._blas = None
        if threads and engine == "tuili":
            from threadpoolctl import ThreadpoolController

            # found once: threadpool_limits() rescans the loaded libraries on every call (~0.7 ms)
            self._blas = ThreadpoolController().select(user_api="blas")
        self._inputs = [v for v in self.graph.inputs if not v.is_initializer]
        self._input_names = {v.name for v in self.graph.inputs}
        self._outputs = list(self.graph.outputs)
        if engine == "onnxruntime":
            self._ort = _ort_session(self.graph, threads)
            self._plan = None
        else:
            # the planner pulls in every kernel: only the tuili engine imports it
            from tuili.runtime import executor
            from tuili.runtime.planner import Planner

            self._run_plan = executor.run
            self.graph.validate()
            try:  # fills the shapes get_outputs() reports; the plan itself does not depend on it
                infer_shapes(self.graph)
            except Exception as e:  # noqa: BLE001
                log.warning("shape inference failed, output shapes stay as declared: %s", e)
            from tuili.passes import optimized_copy

            # the optimizer rewrites a copy: the caller's Graph never changes
            plan_graph, self.optimization_report = optimized_copy(self.graph, opt_level)
            self._plan = Planner(plan_graph).build()
            self._const_roots = {id(_root(v)) for _, v in self._plan.consts if isinstance(v, np.ndarray)}
        self._input_index = {v.name: i for i, v in enumerate(self.graph.inputs)}
        self._output_index = {v.name: i for i, v in enumerate(self._outputs)}
        log.debug("session ready: %s, %d steps", engine, len(self._plan.steps) if self._plan else 0)

    # ----- onnxruntime-compatible API
    def get_inputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._outputs]

    def get_modelmeta(self) -> dict[str, str]:
        return dict(self.graph.metadata_props)

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, Any], run_options: Any = None) -> list[Any]:
        if run_options is not None:
            raise ConfigError("run_options is not supported by tuili's InferenceSession; call run() without it")
        names = list(output_names) if output_names else [v.name for v in self._outputs]
        unknown = [n for n in names if n not in self._output_index]
        if unknown:
            raise InvalidInputError(f"requested output(s) {unknown} do not exist; the model's outputs are "
                                    f"{[v.name for v in self._outputs]}")
        if self._plan is None:
            return self._ort.run(names, self._check_feeds(feeds))
        ordered = self._ordered_feeds(feeds)
        results = self._execute(self._plan, ordered)
        # Kernels may return views (Reshape, Identity, ...): an output must never alias a feed or a
        # weight, or the caller's next write would change the other.
        protected = self._const_roots | {id(_root(v)) for v in ordered if isinstance(v, np.ndarray)}
        out = []
        for n in names:
            r = results[self._output_index[n]]
            out.append(r.copy() if isinstance(r, np.ndarray) and id(_root(r)) in protected else r)
        return out

    # ----- the tuili engine
    @property
    def plan(self) -> Plan | None:
        """The executable plan (tuili engine; None on onnxruntime)."""
        return self._plan

    def _ordered_feeds(self, feeds: dict[str, Any]) -> list[Any]:
        """Checked feeds in graph-input order (None: not fed), as the plan takes them."""
        checked = self._check_feeds(feeds)
        return [checked.get(v.name) for v in self.graph.inputs]

    def _execute(self, plan: Plan, ordered: list[Any], hook: StepHook | None = None) -> list[Any]:
        """Run this session's ``plan`` on feeds in graph-input order, BLAS limited to ``threads``."""
        if self._blas is not None:
            with self._blas.limit(limits=self.threads):
                return self._run_plan(plan, ordered, hook=hook)
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

    def _check_one(self, v: Value, value: Any, symbols: dict) -> Any:
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


def _is_optional(v: Value) -> bool:
    tp = v.type_proto
    return tp is not None and tp.HasField("optional_type")


def _describe_expected(v: Value) -> str:
    shape = "?" if v.shape is None else "[" + ", ".join("?" if d is None else str(d) for d in v.shape) + "]"
    return f"{_type_string(v)} with shape {shape}"


def _ort_session(graph: Graph, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(graph.to_proto().SerializeToString(), opts, providers=["CPUExecutionProvider"])
