"""onnxruntime backend: one InferenceSession per instance, called with the Python API directly."""
from __future__ import annotations

import logging
import os

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
            return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(f"onnxruntime could not load {path}: {e}") from e

    def map_error(self, e: Exception) -> Exception:
        msg = str(e)
        if "INVALID_ARGUMENT" in msg or "Invalid" in msg:
            return InvalidInputError(f"onnxruntime rejected the inputs of {self._path}: {msg}")
        return KernelError(f"onnxruntime failed running {self._path}: {msg}")
