"""Static post-training quantization to QDQ ONNX: prepare, plan, calibrate, rewrite, save.

    report = quantize_static("m.onnx", "m.int8.onnx", "calib.npz", method="mse")
    print(report.summary())

Activations are uint8 asymmetric by default (per tensor: the int8 kernels take one scale per
activation), weights int8 symmetric per output channel. On a CPU without an exact int8 dot product
(no VNNI/AMX, ``tuili.runtime.cpu.exact_int8_dot() is None``) the weights keep 7 bits by default, so
onnxruntime's u8s8 kernels cannot saturate. The input file is only read.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

from tuili.errors import ConfigError

from . import qdq
from .calibrate import DEFAULT_BATCH, collect, model_inputs, reader_for
from .observers import OBSERVERS, make_observer
from .prepare import model_size, prepare
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


def quantize_static(model_in, model_out, calib, method: str = DEFAULT_METHOD, per_channel: bool = True, *,
                    activation_type: str = "uint8", weight_type: str = "int8", symmetric_activations: bool = False,
                    reduce_range: bool | None = None, op_types=qdq.COMPUTE, exclude=(), batch_size: int = DEFAULT_BATCH,
                    samples: int | None = None, progress: Callable[[int], None] | None = None,
                    observer_options: dict | None = None) -> Report:
    """Quantize ``model_in`` (path, bytes, ModelProto or Graph) to a QDQ model written to ``model_out``.

    ``calib``: an .npz path (one array per input), a dict of arrays, a calibration Reader or an
    iterable of feed dicts; ``samples`` caps how many samples are used. ``method`` picks the observer
    of activation ranges (minmax, percentile, entropy, mse; ``observer_options`` go to it).
    ``reduce_range=None`` decides by the CPU (see the module doc). ``op_types`` restricts the
    compute ops quantized, ``exclude`` names nodes to keep float. ``progress(n)`` is called after each
    calibration batch with its sample count."""
    t0 = time.perf_counter()
    check_paths(model_in, model_out)
    if method not in OBSERVERS:
        raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(OBSERVERS)}")
    unknown = set(op_types) - set(qdq.COMPUTE)
    if unknown:
        raise ConfigError(f"op types {sorted(unknown)} cannot be quantized statically; choose from {', '.join(qdq.COMPUTE)}")
    reduce_range = default_reduce_range() if reduce_range is None else bool(reduce_range)
    act_qt = qtype(activation_type, symmetric=symmetric_activations)
    ws = qdq.WeightSettings(qtype(weight_type, symmetric=True, reduce_range=reduce_range), per_channel)
    if not ws.qtype.signed:
        raise ConfigError(f"weight type {weight_type!r}: weights are quantized symmetric int8; use weight_type='int8'")

    graph, _ = prepare(model_in)
    size_before = model_size(model_in) if not isinstance(model_in, bytes) else len(model_in)
    reader = reader_for(calib, model_inputs(graph), batch_size, samples)
    p = qdq.plan(graph, op_types=op_types, exclude=exclude, fold_activations=not symmetric_activations)
    observers = {t: make_observer(method, **(observer_options or {})) for t in p.observed}
    seen = collect(graph, observers, reader, progress) if observers else 0
    act = {t: scale_zero_point(*obs.range(act_qt, symmetric_activations), act_qt, symmetric=symmetric_activations)
           for t, obs in observers.items()}
    qdq.rewrite(graph, p, act, ws)
    graph.producer_name = "tuili.compress.quant"
    graph.save(str(model_out))
    report = Report("static", _label(model_in), str(model_out), size_before, os.path.getsize(model_out),
                    Counter(n.op_type for n in p.compute + p.pass_through), Counter(n.op_type for n in p.folded.values()),
                    p.float_nodes, samples=seen, tensors=len(observers))
    report.settings = {"method": method, "per_channel": per_channel, "activations": act_qt.name + (
        " symmetric" if symmetric_activations else " asymmetric"), "weights": f"{ws.qtype.name} symmetric"
        + (" 7-bit (reduce_range)" if reduce_range else "")}
    report.seconds = time.perf_counter() - t0
    log.debug("%s", report.summary())
    return report


def _label(model) -> str:
    return str(model) if isinstance(model, str | os.PathLike) else f"<{type(model).__name__}>"


__all__ = ["DEFAULT_METHOD", "check_paths", "default_reduce_range", "quantize_static"]
