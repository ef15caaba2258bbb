"""The zoo's catalogue: one :class:`ModelSpec` per model, and the checks on
the knobs a user may turn (width multiplier, input resolution, sequence length).

Model modules register a builder with :func:`register`; nothing here imports
torch, so listing specs stays cheap.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from tuili.errors import ConfigError

# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the zoo knows about one model.

    ``inputs`` maps each ONNX input name to its default shape, with symbolic
    dims as strings (``"batch"``, ``"sequence"``, ``"past_sequence"``).
    ``paper_params`` / ``paper_macs`` are the figures printed in the paper (or
    the reference implementation the paper points to, see ``convention``);
    ``params`` / ``macs`` are measured on the model built here, at the default
    input size, with torch's FlopCounterMode (MACs = FLOPs / 2).
    """

    name: str
    task: str  # "image-classification" | "text-encoding" | "text-generation"
    paper: str
    inputs: dict[str, tuple]
    outputs: tuple[str, ...]
    default_resolution: int | None = None  # images: square side in pixels
    min_resolution: int | None = None
    resolution_multiple: int = 1
    default_seq_len: int | None = None  # text models
    max_seq_len: int | None = None
    in_channels: int = 3
    num_classes: int | None = None
    width_choices: tuple[float, ...] | None = None  # discrete set (e.g. ShuffleNetV2)
    width_range: tuple[float, float] | None = None  # continuous multiplier (MobileNets); None -> fixed
    default_width: float = 1.0
    paper_params: float | None = None
    paper_macs: float | None = None
    convention: str = ""
    dataset: str | None = None  # the data `tuili zoo train NAME` uses by default, in this model's input format
    builder: Callable[..., Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_text(self) -> bool:
        return self.task.startswith("text")

    @property
    def params(self) -> int:
        return _measured(self.name)[0]

    @property
    def macs(self) -> int:
        return _measured(self.name)[1]

    def input_shapes(self, batch: int | str = "batch", resolution: int | None = None, seq_len: int | None = None) -> dict[str, tuple]:
        """Concrete (or partly symbolic) input shapes for the given knobs."""
        out = {}
        for name, shape in self.inputs.items():
            dims = []
            for d in shape:
                if d == "batch":
                    dims.append(batch)
                elif d == "height" or d == "width":
                    dims.append(resolution or self.default_resolution)
                elif d == "sequence":
                    dims.append(seq_len or self.default_seq_len)
                else:
                    dims.append(d)
            out[name] = tuple(dims)
        return out


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"zoo model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # Importing the model modules registers their specs (they import torch).
    from tuili.zoo import models  # noqa: F401


def list_models() -> list[ModelSpec]:
    """Every model of the zoo, in catalogue order."""
    _ensure_loaded()
    return list(_REGISTRY.values())


def names() -> list[str]:
    _ensure_loaded()
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name raises ConfigError listing the known ones."""
    _ensure_loaded()
    key = name.replace("-", "_").lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(str(key), list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown zoo model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


# ---------------------------------------------------------------------------
# knob validation


def check_width(spec: ModelSpec, width: float | None) -> float:
    """Return the width multiplier to build with, or raise ConfigError naming the limit."""
    if width is None:
        return spec.default_width
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise ConfigError(f"{spec.name}: width multiplier must be a number, got {width!r}") from None
    if spec.width_choices is not None:
        if not any(abs(w - c) < 1e-9 for c in spec.width_choices):
            raise ConfigError(
                f"{spec.name}: width multiplier {w:g} is not defined by the paper; "
                f"allowed widths: {', '.join(f'{c:g}' for c in spec.width_choices)}"
            )
        return w
    if spec.width_range is None:
        if abs(w - 1.0) > 1e-9:
            raise ConfigError(f"{spec.name}: this model has no width multiplier (only width=1.0 is valid), got {w:g}")
        return 1.0
    lo, hi = spec.width_range
    if not (lo <= w <= hi):
        raise ConfigError(f"{spec.name}: width multiplier {w:g} is outside the supported range [{lo:g}, {hi:g}]")
    return w


def check_resolution(spec: ModelSpec, resolution: int | None) -> int | None:
    """Return the input side to use, or raise ConfigError naming the minimum / multiple."""
    if spec.is_text:
        if resolution is not None:
            raise ConfigError(f"{spec.name} is a text model: it takes no image resolution (use seq_len=...)")
        return None
    if resolution is None:
        return spec.default_resolution
    try:
        r = int(resolution)
    except (TypeError, ValueError):
        raise ConfigError(f"{spec.name}: resolution must be an integer, got {resolution!r}") from None
    if r != resolution:
        raise ConfigError(f"{spec.name}: resolution must be an integer, got {resolution!r}")
    if spec.min_resolution is not None and r < spec.min_resolution:
        raise ConfigError(
            f"{spec.name}: input resolution {r} is below the model's minimum of {spec.min_resolution} pixels "
            f"(the feature map would vanish); use --resolution {spec.min_resolution} or more"
        )
    if spec.resolution_multiple > 1 and r % spec.resolution_multiple:
        raise ConfigError(
            f"{spec.name}: input resolution {r} must be a multiple of {spec.resolution_multiple} "
            f"(patches must tile every feature map); try {((r // spec.resolution_multiple) + 1) * spec.resolution_multiple}"
        )
    return r


def check_seq_len(spec: ModelSpec, seq_len: int | None) -> int | None:
    if not spec.is_text:
        if seq_len is not None:
            raise ConfigError(f"{spec.name} is an image model: it takes no sequence length (use resolution=...)")
        return None
    if seq_len is None:
        return spec.default_seq_len
    s = int(seq_len)
    if s < 1 or (spec.max_seq_len is not None and s > spec.max_seq_len):
        raise ConfigError(f"{spec.name}: sequence length {s} is outside [1, {spec.max_seq_len}] (the number of position embeddings)")
    return s


@functools.cache
def _measured(name: str) -> tuple[int, int]:
    from tuili.zoo.counting import count

    return count(name)
