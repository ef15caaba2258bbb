"""A read-only, fast-to-query view of a ModelConfig protobuf (what the hot path checks requests against)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from tuili.backends.base import TensorSpec
from tuili.serve.types import config_to_v2, v2_to_numpy


def dtype_name(msg, field_name: str = "data_type") -> str:
    """Enum name ('TYPE_FP32') of an enum field of a protobuf message."""
    value = getattr(msg, field_name)
    return msg.DESCRIPTOR.fields_by_name[field_name].enum_type.values_by_number[value].name


@dataclass(slots=True)
class IOSpec:
    name: str
    datatype: str  # V2
    dims: list[int]  # config dims, without the batch dimension
    reshape: list[int] | None = None  # what the model sees (without batch), if config has reshape
    optional: bool = False
    labels: list[str] | None = None
    np_dtype: np.dtype = field(default=None)

    def __post_init__(self):
        if self.np_dtype is None:
            self.np_dtype = v2_to_numpy(self.datatype)


def _io(t, is_input: bool, model_dir: str | None) -> IOSpec:
    reshape = list(t.reshape.shape) if t.HasField("reshape") else None
    labels = None
    if not is_input and getattr(t, "label_filename", "") and model_dir:
        p = os.path.join(model_dir, t.label_filename)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                labels = [line.rstrip("\n") for line in f]
    return IOSpec(
        name=t.name,
        datatype=config_to_v2(dtype_name(t)),
        dims=[int(d) for d in t.dims],
        reshape=reshape,
        optional=bool(getattr(t, "optional", False)) if is_input else False,
        labels=labels,
    )


class ModelSpec:
    """Inputs/outputs of a model as the protocol sees them (config dims; batch dim added if max_batch_size > 0)."""

    def __init__(self, config, model_dir: str | None = None):
        self.name = config.name
        self.max_batch_size = int(config.max_batch_size)
        self.inputs = {t.name: _io(t, True, model_dir) for t in config.input}
        self.outputs = {t.name: _io(t, False, model_dir) for t in config.output}
        self.required_inputs = [n for n, s in self.inputs.items() if not s.optional]

    def full_shape(self, s: IOSpec) -> list[int]:
        return ([-1] if self.max_batch_size > 0 else []) + list(s.dims)


def tensor_specs(config) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Config inputs/outputs as backend TensorSpecs (model-facing shapes: reshape applied, batch dim -1 added)."""
    mb = int(config.max_batch_size)
    out = []
    for group, is_in in ((config.input, True), (config.output, False)):
        specs = []
        for t in group:
            dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            specs.append(TensorSpec(t.name, config_to_v2(dtype_name(t)), ([-1] if mb > 0 else []) + [int(d) for d in dims],
                                    bool(getattr(t, "optional", False)) if is_in else False))
        out.append(specs)
    return out[0], out[1]
