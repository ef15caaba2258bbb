"""Sensitivity and mixed precision by measurement: which layers to keep in float, and why.

    result = quantize_mixed("m.onnx", "m.mixed.onnx", "calib.npz", budget=30.0)          # SNR >= 30 dB
    result = quantize_mixed("m.onnx", "m.mixed.onnx", "calib.npz", budget=0.5,
                            metric=top1, eval_data="test.npz")                          # <= 0.5 pt drop
    print(result.summary())

Every quantizable layer (a compute node of the static QDQ plan) is measured twice:
  accuracy  the model's score when *only* that layer is quantized: the SNR (dB) of all outputs
            against fp32 on the evaluation data, or a user metric ``metric(outputs) -> float`` (higher
            is better; ``outputs`` maps each output name to its values over the whole evaluation set)
  latency   that layer alone (with the Relu folded into it) as it runs among int8 neighbours: its int8
            kernel on integer input and output, against the float layer with the DequantizeLinear
            and QuantizeLinear that keeping it float there adds; in onnxruntime at the deployment
            batch, the two taking turns
Then: layers that are not faster in int8 stay float if the whole model measures faster so; while the whole model misses the budget, the
quantized layer that costs the most accuracy per millisecond it saves goes back to float (greedy),
and the model is measured again. The budget is the allowed drop in metric points with a metric, or
the minimum SNR in dB without one. The result lists every layer left float with its reason, and the
model's latency against fp32 (and against all-int8) at the deployment batch.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from tuili.errors import ConfigError
from tuili.ir import Graph, Node, infer_shapes
from tuili.passes.base import const_of

from .calibrate import DEFAULT_BATCH, model_inputs, reader_for
from .latency import compare, medians, ort_session
from .ptq import DEFAULT_METHOD, Calibrated, check_paths, static_report
from .qparams import quantize
from .report import FloatNode, Report

log = logging.getLogger(__name__)

Metric = Callable[[dict[str, np.ndarray]], float]
EPS_MS = 1e-3  # a layer saving less than a microsecond counts as saving this much


def load_metric(spec: str) -> Metric:
    """``module:function`` (an importable module, or a path to a .py file) -> the function."""
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise ConfigError(f"metric {spec!r}: give it as module:function (or path/to/file.py:function)")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            loc = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(mod_name))[0], mod_name)
            if loc is None or loc.loader is None or not os.path.exists(mod_name):
                raise ConfigError(f"metric {spec!r}: file {mod_name!r} does not exist")
            module = importlib.util.module_from_spec(loc)
            loc.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:  # the user's own module, next to where they run the command
                sys.path.append(os.getcwd())
            module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"metric {spec!r}: cannot import {mod_name!r}: {e}") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"metric {spec!r}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def snr_db(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> float:
    """SNR of all outputs together against the reference, in dB (inf when equal)."""
    sig = sum(float((ref[k].astype(np.float64) ** 2).sum()) for k in ref)
    noise = sum(float(((ref[k].astype(np.float64) - out[k]) ** 2).sum()) for k in ref)
    return math.inf if noise == 0 else 10 * math.log10(sig / noise) if sig > 0 else -math.inf


class Scorer:
    """Scores graphs on fixed evaluation feeds against the float graph: SNR in dB, or ``metric``."""

    def __init__(self, float_graph: Graph, feeds: list[dict[str, np.ndarray]], metric: Metric | None = None):
        if not feeds:
            raise ConfigError("the evaluation set is empty: give at least one sample")
        self.feeds, self.metric = feeds, metric
        self.reference = self.outputs(float_graph)
        self.baseline = float(metric(self.reference)) if metric else math.inf

    def outputs(self, graph: Graph) -> dict[str, np.ndarray]:
        sess = ort_session(graph)
        names = [o.name for o in sess.get_outputs()]
        runs = [sess.run(names, f) for f in self.feeds]
        return {n: np.concatenate([r[i] for r in runs]) for i, n in enumerate(names)}

    def __call__(self, graph: Graph) -> float:
        out = self.outputs(graph)
        return float(self.metric(out)) if self.metric else snr_db(self.reference, out)

    def cost(self, score: float) -> float:
        """The accuracy a score has lost: metric points, or noise power relative to the signal (SNR)."""
        if self.metric:
            return max(self.baseline - score, 0.0)
        return 10 ** (-score / 10) if math.isfinite(score) else 0.0

    def meets(self, score: float, budget: float) -> bool:
        return self.baseline - score <= budget if self.metric else score >= budget

    def describe(self, score: float) -> str:
        return f"{score:.2f} ({self.baseline - score:+.2f} pt)" if self.metric else f"SNR {score:.1f} dB"


@dataclass
class Layer:
    """What one layer costs and saves in int8."""

    name: str
    op_type: str
    score: float = math.nan  # the model's score with only this layer quantized
    cost: float = 0.0  # accuracy lost by that (Scorer.cost)
    float_ms: float = math.nan  # this layer alone at the deployment batch
    int8_ms: float = math.nan
    kept_float: str = ""  # why it stays float ("" = quantized)

    @property
    def gain_ms(self) -> float:
        return self.float_ms - self.int8_ms


@dataclass
class MixedResult:
    report: Report
    layers: list[Layer]
    budget: float
    score: float  # the written model's
    baseline: float  # fp32's (inf for SNR)
    met: bool
    latency_ms: dict[str, float] = field(default_factory=dict)  # fp32 / all int8 / mixed at the deployment batch
    batch: int = 1
    metric: bool = False

    def layer_table(self) -> str:
        unit = "score" if self.metric else "SNR dB"
        lines = [f"| layer | op | {unit} alone | float ms | int8 ms | kept float because |", "|---|---|---:|---:|---:|---|"]
        for la in self.layers:
            lines.append(f"| {la.name} | {la.op_type} | {la.score:.2f} | {la.float_ms:.3f} | {la.int8_ms:.3f} | "
                         f"{la.kept_float} |")
        return "\n".join(lines)

    def summary(self) -> str:
        return self.report.summary()


def quantize_mixed(model_in, model_out, calib, budget: float, *, metric: Metric | str | None = None, eval_data=None,
                   latency_batch: int = 1, threads: int | None = None, method: str = DEFAULT_METHOD,
                   per_channel: bool = True, reduce_range: bool | None = None, exclude=(),
                   batch_size: int = DEFAULT_BATCH, samples: int | None = None,
                   progress: Callable[[int], None] | None = None, measure_latency: bool = True, repeat: int = 40,
                   budget_s: float = 0.3, bias_correction: bool = True,
                   smooth_alpha: float | None = None) -> MixedResult:
    """Static int8 with the layers that cost the most accuracy per millisecond saved kept float, until
    ``budget`` is met (see the module doc); writes ``model_out``. ``eval_data`` (default: ``calib``)
    feeds the score; ``metric`` is a function or "module:function". ``measure_latency=False`` ranks by
    accuracy alone (every layer counted as saving the same time) and measures no latency."""
    t0 = time.perf_counter()
    check_paths(model_in, model_out)
    if isinstance(metric, str):
        metric = load_metric(metric)
    if latency_batch < 1:
        raise ConfigError(f"latency batch {latency_batch}: give at least 1")
    cal = Calibrated(model_in, calib, method, per_channel, reduce_range=reduce_range, batch_size=batch_size,
                     samples=samples, progress=progress, bias_correction=bias_correction, smooth_alpha=smooth_alpha)
    feeds = list(reader_for(eval_data if eval_data is not None else calib, model_inputs(cal.graph), batch_size, samples))
    scorer = Scorer(cal.graph, feeds, metric)
    fixed = set(exclude)
    layers = [Layer(n.name, n.op_type) for n in cal.full.compute]
    names = {la.name for la in layers}
    for la in layers:  # accuracy: only this layer quantized
        g, _ = cal.build(fixed | (names - {la.name}))
        la.score = scorer(g)
        la.cost = scorer.cost(la.score)
    probe = _batch_of(feeds, latency_batch)
    if measure_latency:
        times = _layer_latency(cal, cal.full.compute, probe, threads, repeat, budget_s)
        for la, (f_s, q_s) in zip(layers, times, strict=True):
            la.float_ms, la.int8_ms = f_s * 1e3, q_s * 1e3
    else:
        for la in layers:
            la.float_ms, la.int8_ms = 1.0, 0.0
    keep = set(fixed)
    slower = [la for la in layers if la.gain_ms <= 0]
    if slower:  # alone they are slower in int8; kept float only if the whole model is faster for it
        all_int8, _ = cal.build(keep)
        trial, _ = cal.build(keep | {la.name for la in slower})
        t = compare({"all": all_int8, "trial": trial}, probe, threads, repeat=repeat * 3, budget=budget_s * 10)
        if t["trial"] < t["all"]:
            for la in slower:
                la.kept_float = f"slower in int8 at batch {latency_batch}"
                keep.add(la.name)
        else:
            log.info("%d layers are slower in int8 alone but the model is not faster with them float: kept int8",
                     len(slower))
    graph, plan = cal.build(keep)
    score = scorer(graph)
    while not scorer.meets(score, budget):
        left = [la for la in layers if la.name not in keep]
        if not left:
            break
        worst = max(left, key=lambda la: la.cost / max(la.gain_ms, EPS_MS))
        worst.kept_float = "sensitivity: most accuracy lost per ms saved"
        keep.add(worst.name)
        graph, plan = cal.build(keep)
        score = scorer(graph)
        log.info("kept %s float: model %s", worst.name, scorer.describe(score))
    met = scorer.meets(score, budget)
    graph.save(str(model_out))
    all_int8, _ = cal.build(fixed)
    lat = compare({"fp32": cal.graph, "int8 (all layers)": all_int8, "mixed": graph}, probe, threads,
                  repeat=repeat * 3, budget=budget_s * 10) if measure_latency else {}
    report = static_report(model_in, model_out, plan, cal, mode="mixed")
    reasons = {la.name: la.kept_float for la in layers if la.kept_float}
    report.float_nodes = [FloatNode(f.name, f.op_type, reasons.get(f.name, f.reason)) for f in report.float_nodes]
    what = "drop" if metric else "SNR"
    report.settings["budget"] = f"{what} {'<=' if metric else '>='} {budget}"
    report.notes = [f"  {la.name} ({la.op_type}): {la.kept_float}; alone in int8: {scorer.describe(la.score)}, "
                    f"{la.int8_ms:.3f} ms vs {la.float_ms:.3f} ms float" for la in layers if la.kept_float]
    ms = {k: v * 1e3 for k, v in lat.items()}
    report.notes = (["layers kept float by measurement:"] if report.notes else []) + report.notes + [
        f"score: fp32 {scorer.baseline:.2f}, mixed {scorer.describe(score)}" if metric else f"score: {scorer.describe(score)}",
        "budget " + ("met" if met else "NOT met: every layer is float and the budget still fails"),
        f"latency at batch {latency_batch} in onnxruntime: fp32 {ms['fp32']:.3f} ms, all int8 {ms['int8 (all layers)']:.3f} ms "
        f"({ms['int8 (all layers)'] / ms['fp32']:.2f}x), mixed {ms['mixed']:.3f} ms ({ms['mixed'] / ms['fp32']:.2f}x)"
        if ms else "latency not measured (ranked by accuracy alone)",
    ]
    report.seconds = time.perf_counter() - t0
    return MixedResult(report, layers, budget, score, scorer.baseline, met, ms, latency_batch, metric is not None)


def _batch_of(feeds: list[dict[str, np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    """A feed of ``batch`` samples from the evaluation feeds (repeated when there are fewer)."""
    joined = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    return {k: np.resize(v, (batch, *v.shape[1:])).astype(v.dtype) for k, v in joined.items()}


def _layer_latency(cal: Calibrated, nodes: list[Node], probe: dict[str, np.ndarray], threads, repeat: int,
                   budget_s: float) -> list[tuple[float, float]]:
    """(float seconds, int8 seconds) of each node alone, on its real inputs at the probe's batch."""
    from tuili.passes import copy_graph

    folded = {id(r.inputs[0].producer): r for r in cal.full.folded.values()}
    wanted = list(dict.fromkeys(v.name for n in nodes for v in n.inputs if v is not None and const_of(v) is None))
    g = copy_graph(cal.graph)
    have = {v.name for v in g.outputs}
    g.outputs = g.outputs + [g.lookup(t) for t in wanted if t not in have and g.lookup(t) is not None]
    sess = ort_session(g, threads)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, probe), strict=True))
    values.update(probe)
    out = []
    for node in nodes:
        part = [node] + ([folded[id(node)]] if id(node) in folded else [])
        single = _single(cal.graph, part, values)
        feeds = {v.name: values[v.name] for v in single.inputs}
        q = copy_graph(single)
        cal.rewrite(q)
        q_model, f_model, q_feeds = _inside_int8_chain(q.to_proto(), single.to_proto(), feeds)
        f_sess, q_sess = ort_session(f_model, threads), ort_session(q_model, threads)
        t = medians({"float": lambda s=f_sess, f=q_feeds: s.run(None, f),
                     "int8": lambda s=q_sess, f=q_feeds: s.run(None, f)}, repeat=repeat, budget=budget_s)
        out.append((t["float"], t["int8"]))
    return out


def _inside_int8_chain(q_model: onnx.ModelProto, f_model: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """The layer as it runs between int8 neighbours, both ways: the QDQ model with the QuantizeLinear of
    each input and the DequantizeLinear of a quantized output removed (integer in, integer out), and
    the float model with a DequantizeLinear before and a QuantizeLinear after instead (what keeping it
    float among int8 layers costs). Returns (int8 model, float model, their feeds: inputs quantized)."""
    g, fg = q_model.graph, f_model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = {i.name: i for i in g.input}
    producer = {o: n for n in g.node for o in n.output}
    drop, q_feeds, f_before, f_after = [], dict(feeds), [], []
    f_inputs = {i.name: i for i in fg.input}
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in inputs:
            x = inputs[n.input[0]]
            scale, zp = inits[n.input[1]], inits[n.input[2]]
            q_feeds.pop(x.name)
            q_feeds[n.output[0]] = quantize(feeds[x.name], scale, zp)
            f_before.append(onnx.helper.make_node("DequantizeLinear", [n.output[0], n.input[1], n.input[2]], [x.name]))
            fx = f_inputs[x.name]
            fx.name = x.name = n.output[0]
            fx.type.tensor_type.elem_type = x.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
            fg.initializer.extend([numpy_helper.from_array(scale, n.input[1]), numpy_helper.from_array(zp, n.input[2])])
            drop.append(n)
    out, f_out = g.output[0], fg.output[0]
    dq = producer.get(out.name)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producer \
            and producer[dq.input[0]].op_type == "QuantizeLinear":
        zp = inits[dq.input[2]]
        f_after.append(onnx.helper.make_node("QuantizeLinear", [f_out.name, dq.input[1], dq.input[2]], [dq.input[0]]))
        for name in dq.input[1:]:
            if name not in {t.name for t in fg.initializer}:
                fg.initializer.append(numpy_helper.from_array(inits[name], name))
        out.name = f_out.name = dq.input[0]
        out.type.tensor_type.elem_type = f_out.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
        drop.append(dq)
    for n in drop:
        g.node.remove(n)
    nodes = f_before + list(fg.node) + f_after
    del fg.node[:]
    fg.node.extend(nodes)
    return q_model, f_model, q_feeds


def _single(graph: Graph, nodes: list[Node], values: Mapping[str, np.ndarray]) -> Graph:
    """A model of ``nodes`` alone: their activation inputs as graph inputs (with the shapes seen in
    ``values``), their constants as initializers, the last node's output as the graph output."""
    g = Graph(f"{nodes[0].name}_alone")
    g.opset_imports = dict(graph.opset_imports)
    inside = {o.name for n in nodes for o in n.outputs}
    for n in nodes:
        for v in n.inputs:
            if v is None or v.name in g.values or v.name in inside:
                continue
            if const_of(v) is not None:
                g.add_initializer(v.name, const_of(v))
            else:
                a = values[v.name]
                g.add_input(v.name, v.dtype, tuple(a.shape))
        g.add_node(n.op_type, [g.values[v.name] if v is not None else None for v in n.inputs], len(n.outputs),
                   domain=n.domain, name=n.name, attrs=dict(n.attrs), output_names=[o.name for o in n.outputs])
    g.outputs = [g.values[nodes[-1].outputs[0].name]]
    infer_shapes(g)
    return g


__all__ = ["Layer", "Metric", "MixedResult", "Scorer", "load_metric", "quantize_mixed", "snr_db"]
