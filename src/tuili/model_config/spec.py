"""What a model takes and gives: one :class:`TensorSpec` per input/output, and the :class:`ModelSpec`
of a configured model (a read-only, fast-to-query view of its ModelConfig, which the hot path checks
requests against).

Backends report TensorSpecs of what the model file declares (``shape`` only); a ModelSpec builds
them from a config, adding the protocol-facing ``dims``, ``reshape`` and ``labels``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuili import dtypes
from tuili.errors import ConfigError
from tuili.model_config.paths import resolve_inside


def _dim(d: Any) -> int:
    """-1 for a dynamic dimension, however the source writes it (None, a symbol, a negative number)."""
    if d is None or isinstance(d, str):
        return -1
    d = int(d)
    return d if d >= 0 else -1


@dataclass(slots=True)
class TensorSpec:
    """One input or output of a model.

    ``datatype`` may be given in any spelling :func:`tuili.dtypes.parse` reads (``"FP32"``,
    ``"tensor(float)"``, ``np.float32``, ``torch.float32``, ``"TYPE_FP32"``); it is kept as the V2 name
    and ``dtype`` holds its row of the dtype table. A type the V2 protocol has no name for raises
    :class:`~tuili.dtypes.UnknownDTypeError` naming it. ``shape`` is what the model itself takes or
    gives: the full shape, batch dimension included when the model batches, -1 for a dynamic size.
    From a config come ``dims`` (the protocol-facing shape without the batch dimension),
    ``reshape`` (what the model sees instead, if the config says so) and the output ``labels``.
    """

    name: str
    datatype: Any
    shape: list[int] = field(default_factory=list)
    optional: bool = False
    dims: list[int] | None = None
    reshape: list[int] | None = None
    labels: list[str] | None = None
    dtype: dtypes.DType = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.dtype = dtypes.parse(self.datatype)
        self.datatype = self.dtype.to_v2()
        self.shape = [_dim(d) for d in self.shape]

    @property
    def np_dtype(self) -> np.dtype:
        return self.dtype.to_numpy()


def _read_labels(model_dir: str | None, filename: str, field: str, allow_outside: bool) -> list[str] | None:
    if not (filename and model_dir):
        return None
    path = resolve_inside(model_dir, filename, field=field, allow_outside=allow_outside)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


class ModelSpec:
    """Inputs/outputs of a configured model, by name, in config order. ``full_shape`` is the
    protocol-facing shape (config dims, batch dimension -1 added if max_batch_size > 0). Output
    labels are read from ``model_dir``; a label file outside it is refused unless
    ``allow_paths_outside`` (:mod:`tuili.model_config.paths`)."""

    def __init__(self, config, model_dir: str | None = None, *, allow_paths_outside: bool = False):
        self.name = config.name
        self.max_batch_size = int(config.max_batch_size)
        self._model_dir, self._allow_outside = model_dir, allow_paths_outside
        self.inputs = {t.name: self._tensor(t, True, i) for i, t in enumerate(config.input)}
        self.outputs = {t.name: self._tensor(t, False, i) for i, t in enumerate(config.output)}
        self.required_inputs = [n for n, s in self.inputs.items() if not s.optional]

    def _tensor(self, t, is_input: bool, index: int) -> TensorSpec:
        dims = [int(d) for d in t.dims]
        reshape = [int(d) for d in t.reshape.shape] if t.HasField("reshape") else None
        return TensorSpec(
            name=t.name,
            datatype=dtypes.from_config(t.data_type),
            shape=self._batch() + (dims if reshape is None else reshape),
            optional=bool(t.optional) if is_input else False,
            dims=dims,
            reshape=reshape,
            labels=None if is_input else _read_labels(self._model_dir, t.label_filename,
                                                      f"output[{index}].label_filename", self._allow_outside),
        )

    def _batch(self) -> list[int]:
        return [-1] if self.max_batch_size > 0 else []

    def full_shape(self, s: TensorSpec) -> list[int]:
        if s.dims is None:
            raise ConfigError(f"tensor {s.name!r} has no config dims: full_shape takes the specs of this "
                              f"ModelSpec ({self.name!r}), not a model's own TensorSpec")
        return self._batch() + list(s.dims)
