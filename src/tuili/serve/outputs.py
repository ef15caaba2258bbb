"""From what a model returned to the outputs a client gets: config dtype and dims, and the
classification extension (top-k ``"value:index[:label]"`` strings)."""
from __future__ import annotations

import numpy as np

from tuili.errors import InvalidInputError, KernelError
from tuili.model_config import ModelSpec
from tuili.serve.types import InferOutput, RequestedOutput


def conform(spec: ModelSpec, name: str, arr) -> np.ndarray:
    """A model output in its config's datatype and dims (undoing a config ``reshape``)."""
    s = spec.outputs[name]
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    if s.reshape is not None:
        lead = [arr.shape[0]] if spec.max_batch_size > 0 and arr.ndim else []
        arr = arr.reshape(lead + list(s.dims))
    if arr.dtype != s.np_dtype:  # e.g. a python model returning float64 for a TYPE_FP32 output
        arr = arr.astype(s.np_dtype)
    return arr


def response_outputs(model: str, spec: ModelSpec, out: dict[str, np.ndarray], requested: list[RequestedOutput] | None) -> list[InferOutput]:
    """The requested outputs (all when none are named), classified where a class count is asked for."""
    names = [(o.name, o.parameters) for o in requested] if requested else [(n, {}) for n in spec.outputs]
    result = []
    for name, params in names:
        arr = out.get(name)
        if arr is None:
            raise KernelError(f"model {model!r} did not produce output {name!r} (it produced {', '.join(out) or 'nothing'})")
        arr = conform(spec, name, arr)
        datatype = spec.outputs[name].datatype
        k = params.get("classification", params.get("class_count", 0)) if params else 0
        if k:
            arr = classify(arr, int(k), spec.outputs[name].labels, batched=spec.max_batch_size > 0)
            datatype = "BYTES"
        result.append(InferOutput(name, datatype, list(arr.shape), arr, {}))
    return result


def classify(arr: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """Classification extension: top-k "value:index[:label]" strings per batch item."""
    if k < 0:
        raise InvalidInputError(f"class_count must be positive, got {k}")
    if arr.dtype == object or arr.dtype.kind in "SUb":
        raise InvalidInputError(f"classification needs a numeric output, this one is {arr.dtype}")
    rows = arr.reshape(arr.shape[0], -1) if batched and arr.ndim else arr.reshape(1, -1)
    k = min(k, rows.shape[1])
    idx = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty(idx.shape, dtype=object)
    for r in range(rows.shape[0]):
        for c in range(k):
            i = int(idx[r, c])
            s = f"{float(rows[r, i]):f}:{i}"
            if labels is not None and i < len(labels):
                s += f":{labels[i]}"
            out[r, c] = s.encode()
    return out if batched and arr.ndim else out.reshape(k)
