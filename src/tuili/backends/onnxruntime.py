"""onnxruntime backend: one InferenceSession per instance, called with the Python API directly.

Errors the request causes are the client's (400), not the server's: inputs the model declares with
the same symbolic dimension (a BERT's ``input_ids`` and ``attention_mask`` both ``[batch, seq]``)
must agree before anything runs, and onnxruntime's INVALID_ARGUMENT errors and shape failures at
run time (an axis that does not broadcast) become InvalidInputError.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from tuili.backends.base import OnnxSessionBackend, config_parameter, int_parameter
from tuili.errors import ConfigError, InvalidInputError, KernelError, ModelLoadError

log = logging.getLogger(__name__)


# config parameter "optimization_level" -> onnxruntime's GraphOptimizationLevel name
_LEVELS = {"0": "ORT_DISABLE_ALL", "1": "ORT_ENABLE_BASIC", "2": "ORT_ENABLE_EXTENDED", "99": "ORT_ENABLE_ALL"}


class OnnxRuntimeBackend(OnnxSessionBackend):
    name = "onnxruntime"
    parameter_keys = frozenset({"intra_op_thread_count", "inter_op_thread_count", "allow_spinning", "optimization_level"})

    def open_session(self, path: str, config):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # Split the cores between the instances so N instances do not oversubscribe the machine.
        cores = os.cpu_count() or 1
        so.intra_op_num_threads = int_parameter(config, "intra_op_thread_count", max(1, cores // max(1, self.instance_count)))
        so.inter_op_num_threads = int_parameter(config, "inter_op_thread_count", 1)
        so.log_severity_level = 3
        # onnxruntime's idle intra-op threads spin by default and then steal the cores the server's
        # own threads (gRPC, HTTP, batching) need: on 2 cores, gRPC at concurrency 16 without batching
        # ran at 13 inferences/s spinning and 49/s not (benchmarks/serve.py). Off unless the config
        # says parameters { key: "allow_spinning" value: { string_value: "1" } }.
        spin = config_parameter(config, "allow_spinning") or "0"
        if spin not in ("0", "1"):
            raise ConfigError(f"model config parameter 'allow_spinning' must be \"0\" or \"1\", got {spin!r}")
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        level = config_parameter(config, "optimization_level")
        if level:
            if level not in _LEVELS:
                raise ConfigError(f"model config parameter 'optimization_level' must be one of "
                                  f"{', '.join(_LEVELS)} (onnxruntime's levels), got {level!r}")
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        try:
            session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(f"onnxruntime could not load {path}: {e}") from e
        self._shared_dims = shared_dims(session.get_inputs())
        return session

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_shared_dims(self._shared_dims, feeds, self.model_name)
        return super().infer(feeds)

    def map_error(self, e: Exception) -> Exception:
        msg = str(e)
        if type(e).__name__ == "InvalidArgument" or "INVALID_ARGUMENT" in msg or any(m in msg for m in _SHAPE_FAILURES):
            return InvalidInputError(f"onnxruntime cannot run {self._path} on these inputs: {msg.strip()}")
        return KernelError(f"onnxruntime failed running {self._path}: {msg}")


# Run-time failures that come from the shapes a request sent, not from the model or the server.
_SHAPE_FAILURES = ("Attempting to broadcast an axis", "Invalid rank for input", "Got invalid dimensions for input",
                   "Shape mismatch", "The input tensor cannot be reshaped")


def shared_dims(inputs) -> dict[str, list[tuple[str, int]]]:
    """The symbolic dimensions that more than one input axis declares: name -> [(input, axis)]."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for a in inputs:
        for axis, d in enumerate(a.shape or ()):
            if isinstance(d, str) and d:
                uses.setdefault(d, []).append((a.name, axis))
    return {d: u for d, u in uses.items() if len(u) > 1}


def check_shared_dims(shared: dict[str, list[tuple[str, int]]], feeds: dict[str, np.ndarray], model: str) -> None:
    """InvalidInputError when the feeds give one symbolic dimension two sizes."""
    for dim, uses in shared.items():
        seen = None
        for name, axis in uses:
            arr = feeds.get(name)
            if arr is None or arr.ndim <= axis:
                continue
            size = arr.shape[axis]
            if seen is None:
                seen = (name, axis, size)
            elif size != seen[2]:
                raise InvalidInputError(
                    f"model {model!r}: input {seen[0]!r} has {seen[2]} along axis {seen[1]} but input {name!r} has "
                    f"{size} along axis {axis}; the model declares both as dimension {dim!r}, so they must be equal")
