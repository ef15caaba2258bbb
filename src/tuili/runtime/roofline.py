"""Roofline analysis of a profile: FLOPs and bytes per step, the machine's measured peaks, and
which roof bounds each op.

    peaks = machine_peaks()                  # measured once per CPU and thread count, cached on disk
    rows = analyse(prof, peaks)              # one OpCost per step: GFLOP/s, GB/s, memory/compute bound
    plot(rows, peaks, "roofline.png")

FLOP conventions (a multiply-add is 2 FLOPs): Conv/ConvTranspose 2*out*(C_in/group)*prod(kernel)
(+out for a bias, +out for a fused residual addend); MatMul 2*out*K; Gemm 2*M*N*K (+M*N for C);
elementwise ops one per output element; pooling one per window element and output; reductions
and global pools one per input element; BatchNormalization 2, LayerNormalization and
InstanceNormalization 5, Softmax 3 per element. Ops that move data (Reshape, Transpose, Concat...)
count 0 FLOPs. Bytes are every input read once plus every output written once.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuili.runtime import cpu

if TYPE_CHECKING:
    from tuili.runtime.profile import Profile, StepProfile

log = logging.getLogger(__name__)

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Relu", "LeakyRelu", "PRelu",
    "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip", "Elu", "Selu", "Gelu", "FastGelu", "QuickGelu",
    "BiasGelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Softplus", "Mish", "Swish",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Not", "Cast", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos"})
REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
                        "ReduceSumSquare", "GlobalAveragePool", "GlobalMaxPool", "ArgMax", "ArgMin"})
PER_ELEMENT = {"BatchNormalization": 2, "LayerNormalization": 5, "InstanceNormalization": 5,
               "SkipLayerNormalization": 6, "Softmax": 3, "LogSoftmax": 4}


def _count(shape: tuple[int, ...] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def step_flops(op_type: str, inputs: Sequence[tuple[int, ...] | None], outputs: Sequence[tuple[int, ...] | None],
               attrs: dict) -> int:
    """FLOPs of one op from its input and output shapes (module docstring for the conventions)."""
    out = _count(outputs[0]) if outputs else 0
    if op_type in ("Conv", "FusedConv", "ConvTranspose") and len(inputs) > 1 and inputs[1] is not None:
        w = inputs[1]
        if op_type == "ConvTranspose":  # weight (C_in, C_out/group, k...): every input element feeds C_out/g*k
            flops = 2 * _count(inputs[0]) * _count(w[1:])
        else:
            flops = 2 * out * _count(w[1:])
        extras = sum(1 for s in inputs[2:] if s is not None)  # bias, residual addend
        return flops + extras * out
    if op_type in ("MatMul", "FusedMatMul", "MatMulInteger") and inputs and inputs[0]:
        k = inputs[0][-1]
        return 2 * out * k + (out if op_type == "FusedMatMul" and len(inputs) > 2 and inputs[2] is not None else 0)
    if op_type in ("Gemm", "FusedGemm") and inputs and inputs[0]:
        a = inputs[0]
        k = a[0] if attrs.get("transA") else a[-1]
        return 2 * out * k + (out if len(inputs) > 2 and inputs[2] is not None else 0)
    if op_type in ("MaxPool", "AveragePool", "LpPool"):
        return out * _count(tuple(attrs.get("kernel_shape") or ()))
    if op_type in REDUCTIONS:
        return _count(inputs[0]) if inputs else 0
    if op_type in PER_ELEMENT:
        return PER_ELEMENT[op_type] * (_count(inputs[0]) if inputs else out)
    if op_type in ELEMENTWISE:
        return out
    return 0


@dataclass(frozen=True)
class Peaks:
    gflops: float    # float32 GEMM
    gbytes: float    # large copy, read + write
    key: str

    @property
    def ridge(self) -> float:
        """Arithmetic intensity (FLOP/byte) where the memory roof meets the compute roof."""
        return self.gflops / self.gbytes


def measure_peaks(threads: int | None = None, n: int = 1024, copy_mb: int = 64, repeats: int = 5) -> Peaks:
    """A short measurement: the best of ``repeats`` n x n float32 GEMMs and copies of ``copy_mb`` MB."""
    from tuili.runtime.threads import Threads

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    src = np.ones(copy_mb << 18, np.float32)
    dst = np.empty_like(src)
    gemm = copy = math.inf
    with Threads(threads).limit():
        np.matmul(a, b, out=c)
        np.copyto(dst, src)
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            t1 = time.perf_counter()
            np.copyto(dst, src)
            t2 = time.perf_counter()
            gemm, copy = min(gemm, t1 - t0), min(copy, t2 - t1)
    return Peaks(2 * n**3 / gemm / 1e9, 2 * src.nbytes / copy / 1e9, _key(threads))


def _key(threads: int | None) -> str:
    return f"{cpu.info().model} | threads={threads or 'auto'}"


def machine_peaks(threads: int | None = None, refresh: bool = False) -> Peaks:
    """The machine's peaks for this CPU and thread count: measured once, then read from
    ``$TUILI_CACHE_DIR/peaks.json`` (default ~/.cache/tuili)."""
    path, key = cpu.cache_file("peaks.json"), _key(threads)
    try:
        cached = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cached = {}
    if not refresh and key in cached:
        return Peaks(**cached[key])
    peaks = measure_peaks(threads)
    cached[key] = asdict(peaks)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached, indent=1))
    except OSError as e:
        log.warning("could not cache the machine's peaks in %s: %s", path, e)
    return peaks


@dataclass(frozen=True)
class OpCost:
    step: StepProfile
    flops: int
    nbytes: int

    @property
    def seconds(self) -> float:
        return self.step.median

    @property
    def intensity(self) -> float:
        return self.flops / self.nbytes if self.nbytes else 0.0

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds else 0.0

    @property
    def gbytes(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds else 0.0

    def bound(self, peaks: Peaks) -> str:
        """"memory" or "compute": which roof is lower at this op's arithmetic intensity."""
        return "compute" if self.intensity >= peaks.ridge else "memory"

    def attained(self, peaks: Peaks) -> float:
        """Share of the roof at this intensity the op reached (0..1)."""
        roof = min(peaks.gflops, self.intensity * peaks.gbytes)
        return self.gflops / roof if roof else 0.0


def analyse(prof: Profile) -> list[OpCost]:
    """One OpCost per profiled step."""
    return [OpCost(s, step_flops(s.op_type, s.input_shapes, s.output_shapes, s.attrs),
                   sum(s.input_nbytes) + sum(s.output_nbytes)) for s in prof.steps]


def plot(costs: Sequence[OpCost], peaks: Peaks, path: str | os.PathLike, title: str = "") -> None:
    """A log-log roofline PNG: the two roofs and one point per op with FLOPs (area ~ time share)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [c for c in costs if c.flops and c.seconds]
    total = sum(c.seconds for c in costs) or 1.0
    fig, ax = plt.subplots(figsize=(8, 5.5))
    lo = min([c.intensity for c in points] + [peaks.ridge / 100]) / 2
    hi = max([c.intensity for c in points] + [peaks.ridge * 10]) * 2
    xs = np.geomspace(lo, hi, 200)
    ax.plot(xs, np.minimum(peaks.gflops, xs * peaks.gbytes), "k-",
            label=f"roof: {peaks.gflops:.0f} GFLOP/s, {peaks.gbytes:.1f} GB/s")
    by_op: dict[str, list[OpCost]] = {}
    for c in points:
        by_op.setdefault(c.step.op_type, []).append(c)
    for op, group in sorted(by_op.items(), key=lambda kv: -sum(c.seconds for c in kv[1])):
        ax.scatter([c.intensity for c in group], [c.gflops for c in group], alpha=0.7, label=op,
                   s=[20 + 600 * c.seconds / total for c in group])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(title or "roofline")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
