"""Static post-training quantization to QDQ ONNX: prepare, plan, calibrate, rewrite, save.

    report = quantize_static("m.onnx", "m.int8.onnx", "calib.npz", method="mse")
    print(report.summary())

Activations are uint8 asymmetric by default (per tensor: the int8 kernels take one scale per
activation), weights int8 symmetric per output channel. On a CPU without an exact int8 dot product
(no VNNI/AMX, ``tuili.runtime.cpu.exact_int8_dot() is None``) the weights keep 7 bits by default, so
onnxruntime's u8s8 kernels cannot saturate. ``weight_bits`` (2..8) narrows the weights' range inside
their type (4-bit weights stored int8 still run on onnxruntime's int8 kernels); ``int4``/``uint4`` types
store 4 bits (the model is raised to opset 21). The input file is only read.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from tuili.errors import ConfigError
from tuili.ir import Graph, infer_shapes
from tuili.passes import copy_graph

from . import qdq, smooth
from .biascorrect import MeanObserver, Tee, input_axis
from .calibrate import DEFAULT_BATCH, collect, model_inputs, reader_for
from .observers import OBSERVERS, MinMaxObserver, make_observer
from .prepare import FOUR_BIT_OPSET, MIN_OPSET, model_size, prepare
from .qparams import qtype, scale_zero_point
from .report import Report

log = logging.getLogger(__name__)

DEFAULT_METHOD = "mse"  # the best SNR on the zoo CNNs in benchmarks/quantize.py


def default_reduce_range() -> bool:
    """7-bit weights where onnxruntime's u8s8 kernels would saturate (no VNNI/AMX)."""
    from tuili.runtime.cpu import exact_int8_dot

    return exact_int8_dot() is None


def check_paths(model_in, model_out) -> None:
    if model_out is None:
        raise ConfigError("give an output path for the quantized model")
    if isinstance(model_in, str | os.PathLike) and os.path.exists(model_out) and os.path.samefile(model_in, model_out):
        raise ConfigError(f"output {str(model_out)!r} is the input model: the input is never overwritten, "
                          "write the quantized model to another path")


class Calibrated:
    """A prepared float graph with its activation ranges, from which QDQ graphs with any set of nodes
    kept float are written without calibrating again (the sensitivity search builds many of them).

    Ranges are calibrated for the full plan; a tensor that a smaller plan quantizes and the full plan
    did not (rare: e.g. a Relu no longer folded) is calibrated on demand from the same data."""

    def __init__(self, model_in, calib, method: str = DEFAULT_METHOD, per_channel: bool = True, *,
                 activation_type: str = "uint8", weight_type: str = "int8", symmetric_activations: bool = False,
                 reduce_range: bool | None = None, op_types=qdq.COMPUTE, batch_size: int = DEFAULT_BATCH,
                 samples: int | None = None, progress: Callable[[int], None] | None = None,
                 observer_options: dict | None = None, bias_correction: bool = True,
                 smooth_alpha: float | None = None, weight_bits: int | None = None,
                 act_params: dict[str, tuple] | None = None, weight_scales: dict[str, np.ndarray] | None = None):
        if method not in OBSERVERS:
            raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(OBSERVERS)}")
        unknown = set(op_types) - set(qdq.COMPUTE)
        if unknown:
            raise ConfigError(f"op types {sorted(unknown)} cannot be quantized statically; choose from "
                              f"{', '.join(qdq.COMPUTE)}")
        self.method, self.op_types, self.observer_options = method, tuple(op_types), dict(observer_options or {})
        self.reduce_range = default_reduce_range() if reduce_range is None else bool(reduce_range)
        self.symmetric_activations = symmetric_activations
        self.act_qt = qtype(activation_type, symmetric=symmetric_activations)
        self.ws = qdq.WeightSettings(qtype(weight_type, symmetric=True, reduce_range=self.reduce_range,
                                           bits=weight_bits), per_channel)
        if not self.ws.qtype.signed:
            raise ConfigError(f"weight type {weight_type!r}: weights are quantized symmetric; use weight_type='int8' "
                              "or 'int4'")
        four_bit = min(self.act_qt.storage_bits, self.ws.qtype.storage_bits) == 4
        self.graph, _ = prepare(model_in, min_opset=FOUR_BIT_OPSET if four_bit else MIN_OPSET)
        for node in self.graph.nodes:  # layers are named in reports and exclude lists
            if not node.name:
                node.name = self.graph.unique_name(node.op_type)
        self.reader = reader_for(calib, model_inputs(self.graph), batch_size, samples)
        self.smooth_alpha = smooth_alpha
        self.smoothed = self._smooth(smooth_alpha) if smooth_alpha is not None else []
        # ranges the caller already knows (QAT's learned ones) are used as given, never calibrated
        self.act: dict[str, tuple] = {t: (np.float32(sc), np.asarray(zp).astype(self.act_qt.numpy))
                                      for t, (sc, zp) in (act_params or {}).items()}
        self.weight_scales = dict(weight_scales or {})
        self.bias_correction = bias_correction
        self.means: dict[str, np.ndarray] = {}  # float input of a Conv/Gemm -> per-channel mean
        self.samples = 0
        self.full = self.plan()
        self._calibrate(self.full.observed, progress, self._mean_axes(self.full))

    def plan(self, exclude=()) -> qdq.Plan:
        return qdq.plan(self.graph, op_types=self.op_types, exclude=exclude,
                        fold_activations=not self.symmetric_activations)

    def _smooth(self, alpha: float) -> list[str]:
        """SmoothQuant on the prepared graph (smooth.py), from one calibration pass of per-channel
        ranges; returns the activations smoothed."""
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"SmoothQuant alpha must be in (0, 1], got {alpha}")
        groups = smooth.groups(self.graph)
        if not groups:
            return []
        observers = {g.x.name: MinMaxObserver(axis=-1) for g in groups}
        collect(self.graph, observers, self.reader)
        for g in groups:
            o = observers[g.x.name]
            smooth.apply(self.graph, g, smooth.scales(g, np.maximum(np.abs(o.min), np.abs(o.max)), alpha))
        self.graph.topological_sort()
        infer_shapes(self.graph)
        return [g.x.name for g in groups]

    def _mean_axes(self, p: qdq.Plan) -> dict[str, int]:
        """Tensors whose per-channel mean bias correction needs, with their channel axis."""
        if not self.bias_correction:
            return {}
        axes = {n.inputs[0].name: input_axis(n) for n in p.compute}
        return {t: a for t, a in axes.items() if a is not None and t not in self.means}

    def _calibrate(self, tensors, progress=None, mean_axes: dict[str, int] | None = None) -> None:
        ranges = {t: make_observer(self.method, **self.observer_options) for t in tensors if t not in self.act}
        means = {t: MeanObserver(a) for t, a in (mean_axes or {}).items()}
        if not ranges and not means:
            return
        observers = {t: Tee(*[o for o in (ranges.get(t), means.get(t)) if o is not None]) for t in {**ranges, **means}}
        seen = collect(self.graph, observers, self.reader, progress)
        self.samples = max(self.samples, seen)
        sym = self.symmetric_activations
        for t, obs in ranges.items():
            self.act[t] = scale_zero_point(*obs.range(self.act_qt, sym), self.act_qt, symmetric=sym)
        self.means.update({t: m.mean for t, m in means.items()})

    def build(self, exclude=()) -> tuple[Graph, qdq.Plan]:
        """A QDQ copy of the graph with the nodes named in ``exclude`` kept float, and its plan."""
        g = copy_graph(self.graph)
        return g, self.rewrite(g, exclude)

    def rewrite(self, g: Graph, exclude=()) -> qdq.Plan:
        """Quantize ``g`` in place with these ranges (``g``: this graph or a part of it, same tensor names)."""
        p = qdq.plan(g, op_types=self.op_types, exclude=exclude, fold_activations=not self.symmetric_activations)
        self._calibrate(p.observed, mean_axes=self._mean_axes(p))
        qdq.rewrite(g, p, {t: self.act[t] for t in p.observed}, self.ws, self.means if self.bias_correction else None,
                    self.weight_scales)
        g.producer_name = "tuili.compress.quant"
        return p

    def settings(self) -> dict:
        return {"method": self.method, "per_channel": self.ws.per_channel,
                "activations": self.act_qt.name + (" symmetric" if self.symmetric_activations else " asymmetric"),
                "weights": f"{self.ws.qtype.name} symmetric" + _bits_note(self.ws.qtype),
                "bias_correction": self.bias_correction,
                "smoothquant": f"alpha {self.smooth_alpha}, {len(self.smoothed)} activations" if self.smoothed else "off"}


def quantize_static(model_in, model_out, calib, method: str = DEFAULT_METHOD, per_channel: bool = True, *,
                    activation_type: str = "uint8", weight_type: str = "int8", symmetric_activations: bool = False,
                    reduce_range: bool | None = None, op_types=qdq.COMPUTE, exclude=(), batch_size: int = DEFAULT_BATCH,
                    samples: int | None = None, progress: Callable[[int], None] | None = None,
                    observer_options: dict | None = None, bias_correction: bool = True,
                    smooth_alpha: float | None = None, weight_bits: int | None = None) -> Report:
    """Quantize ``model_in`` (path, bytes, ModelProto or Graph) to a QDQ model written to ``model_out``.

    ``calib``: an .npz path (one array per input), a dict of arrays, a calibration Reader or an
    iterable of feed dicts; ``samples`` caps how many samples are used. ``method`` picks the observer
    of activation ranges (minmax, percentile, entropy, mse; ``observer_options`` go to it).
    ``reduce_range=None`` decides by the CPU (see the module doc). ``op_types`` restricts the
    compute ops quantized, ``exclude`` names nodes to keep float. ``bias_correction`` adds back to each
    Conv/Gemm bias the mean shift its weights' rounding causes (biascorrect.py). ``smooth_alpha``
    migrates activation outliers into MatMul/Gemm weights first (SmoothQuant, smooth.py). ``weight_bits``
    narrows the weights' range inside ``weight_type`` (see the module doc). ``progress(n)`` is called after each
    calibration batch with its sample count."""
    t0 = time.perf_counter()
    check_paths(model_in, model_out)
    cal = Calibrated(model_in, calib, method, per_channel, activation_type=activation_type, weight_type=weight_type,
                     symmetric_activations=symmetric_activations, reduce_range=reduce_range, op_types=op_types,
                     batch_size=batch_size, samples=samples, progress=progress, observer_options=observer_options,
                     bias_correction=bias_correction, smooth_alpha=smooth_alpha, weight_bits=weight_bits)
    graph, p = cal.build(exclude)
    graph.save(str(model_out))
    report = static_report(model_in, model_out, p, cal)
    report.seconds = time.perf_counter() - t0
    log.debug("%s", report.summary())
    return report


def static_report(model_in, model_out, p: qdq.Plan, cal: Calibrated, mode: str = "static") -> Report:
    size_before = model_size(model_in) if not isinstance(model_in, bytes) else len(model_in)
    report = Report(mode, _label(model_in), str(model_out), size_before, os.path.getsize(model_out),
                    Counter(n.op_type for n in p.compute + p.pass_through), Counter(n.op_type for n in p.folded.values()),
                    p.float_nodes, samples=cal.samples, tensors=len(p.observed))
    report.settings = cal.settings()
    return report


def _bits_note(qt) -> str:
    bits = int(qt.qmax - qt.qmin).bit_length()
    if qt.storage_bits == 8 and qt.qmax == 64:
        return " 7-bit (reduce_range)"
    return f" {bits}-bit in {qt.name}" if bits < qt.storage_bits else ""


def _label(model) -> str:
    return str(model) if isinstance(model, str | os.PathLike) else f"<{type(model).__name__}>"


__all__ = ["Calibrated", "DEFAULT_METHOD", "check_paths", "default_reduce_range", "quantize_static", "static_report"]
