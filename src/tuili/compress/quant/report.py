"""What a quantization did: sizes, the layers quantized, the layers left in float and why."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FloatNode:
    name: str
    op_type: str
    reason: str


@dataclass
class Report:
    mode: str  # "static" | "dynamic" | "int4" | "mixed"
    model_in: str
    model_out: str
    size_before: int = 0  # bytes
    size_after: int = 0
    quantized: Counter = field(default_factory=Counter)  # op type -> nodes quantized
    folded: Counter = field(default_factory=Counter)  # activations absorbed by the quantizer's clamp (Relu, Clip)
    float_nodes: list[FloatNode] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # method, types, per_channel, reduce_range, ...
    samples: int = 0  # calibration samples seen
    tensors: int = 0  # activation tensors calibrated
    seconds: float = 0.0
    weight_bytes_before: int = 0  # the quantized layers' weights (int4: float32 -> codes + scales + zero points)
    weight_bytes_after: int = 0
    notes: list[str] = field(default_factory=list)  # extra lines (measured latency, budget, ...)

    @property
    def ratio(self) -> float:
        return self.size_after / self.size_before if self.size_before else 0.0

    def float_reasons(self) -> dict[str, list[str]]:
        """reason -> op types (with counts) left in float for it."""
        groups: dict[str, Counter] = {}
        for f in self.float_nodes:
            groups.setdefault(f.reason, Counter())[f.op_type] += 1
        return {r: [f"{op} x{n}" if n > 1 else op for op, n in c.most_common()] for r, c in groups.items()}

    def summary(self) -> str:
        q = ", ".join(f"{op} x{n}" for op, n in self.quantized.most_common()) or "nothing"
        lines = [
            f"{self.mode} quantization of {self.model_in} -> {self.model_out} in {self.seconds:.1f} s",
            "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            f"size: {_mb(self.size_before)} -> {_mb(self.size_after)} ({self.ratio:.2f}x)",
            f"quantized: {q}",
        ]
        if self.weight_bytes_before:
            lines.append(f"quantized weights: {_mb(self.weight_bytes_before)} -> {_mb(self.weight_bytes_after)} "
                         f"({self.weight_bytes_before / max(self.weight_bytes_after, 1):.2f}x smaller)")
        if self.folded:
            lines.append("folded into the quantizer's clamp: " + ", ".join(f"{op} x{n}" for op, n in self.folded.items()))
        if self.samples:
            lines.append(f"calibration: {self.tensors} tensors over {self.samples} samples")
        for reason, ops in self.float_reasons().items():
            lines.append(f"left in float ({reason}): {', '.join(ops)}")
        lines += self.notes
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
