"""onnxruntime backend: one InferenceSession per instance, called with the Python API directly."""
from __future__ import annotations

import logging
import os

from tuili.backends.base import OnnxSessionBackend, config_parameter
from tuili.errors import ConfigError, InvalidInputError, KernelError, ModelLoadError

log = logging.getLogger(__name__)


def _int_param(config, key: str, default: int) -> int:
    v = config_parameter(config, key)
    if v in (None, ""):
        return default
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"model config parameter {key!r} must be an integer, got {v!r}") from None


class OnnxRuntimeBackend(OnnxSessionBackend):
    name = "onnxruntime"

    def open_session(self, path: str, config):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # Split the cores between the instances so N instances do not oversubscribe the machine.
        cores = os.cpu_count() or 1
        so.intra_op_num_threads = _int_param(config, "intra_op_thread_count", max(1, cores // max(1, self.instance_count)))
        so.inter_op_num_threads = _int_param(config, "inter_op_thread_count", 1)
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
            so.graph_optimization_level = {
                "0": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "1": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "2": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "99": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        try:
            return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(f"onnxruntime could not load {path}: {e}") from e

    def map_error(self, e: Exception) -> Exception:
        msg = str(e)
        if "INVALID_ARGUMENT" in msg or "Invalid" in msg:
            return InvalidInputError(f"onnxruntime rejected the inputs of {self._path}: {msg}")
        return KernelError(f"onnxruntime failed running {self._path}: {msg}")
