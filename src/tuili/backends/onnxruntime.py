"""onnxruntime backend: one InferenceSession per instance, called with the Python API directly."""
from __future__ import annotations

import logging
import os

import numpy as np

from tuili.backends.base import Backend, TensorSpec, bytes_to_str, str_to_bytes, config_parameter, dims_from_onnx, onnx_type_to_v2
from tuili.errors import InvalidInputError, KernelError, ModelLoadError

log = logging.getLogger(__name__)


def _int_param(config, key: str, default: int) -> int:
    v = config_parameter(config, key)
    if v in (None, ""):
        return default
    try:
        return int(v)
    except ValueError:
        from tuili.errors import ConfigError

        raise ConfigError(f"model config parameter {key!r} must be an integer, got {v!r}") from None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    default_filename = "model.onnx"

    def load(self, model_dir: str, version_dir: str, config) -> None:
        import onnxruntime as ort

        path = self.model_file(version_dir, config, candidates=tuple(sorted(f for f in os.listdir(version_dir) if f.endswith(".onnx"))))
        so = ort.SessionOptions()
        # Split the cores between the instances so N instances do not oversubscribe the machine.
        cores = os.cpu_count() or 1
        so.intra_op_num_threads = _int_param(config, "intra_op_thread_count", max(1, cores // max(1, self.instance_count)))
        so.inter_op_num_threads = _int_param(config, "inter_op_thread_count", 1)
        so.log_severity_level = 3
        # Idle intra-op threads spin by default; on a small machine they then steal the cores the
        # server's own threads (HTTP, batching) need. parameters { key: "allow_spinning" value: { string_value: "0" } }
        spin = config_parameter(config, "allow_spinning")
        if spin in ("0", "1"):
            so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        level = config_parameter(config, "optimization_level")
        if level:
            so.graph_optimization_level = {
                "0": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "1": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "2": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "99": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        try:
            self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(f"onnxruntime could not load {path}: {e}") from e
        self.inputs = [TensorSpec(a.name, onnx_type_to_v2(a.type), dims_from_onnx(a.shape)) for a in self.session.get_inputs()]
        self.outputs = [TensorSpec(a.name, onnx_type_to_v2(a.type), dims_from_onnx(a.shape)) for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self.outputs if s.datatype == "BYTES"}
        self._path = path

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._string_inputs:
            feeds = {k: (bytes_to_str(v) if k in self._string_inputs else v) for k, v in feeds.items()}
        try:
            results = self.session.run(self._output_names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            msg = str(e)
            if "INVALID_ARGUMENT" in msg or "Invalid" in msg:
                raise InvalidInputError(f"onnxruntime rejected the inputs of {self._path}: {msg}") from e
            raise KernelError(f"onnxruntime failed running {self._path}: {msg}") from e
        out = dict(zip(self._output_names, results))
        for k in self._string_outputs:
            out[k] = str_to_bytes(out[k])
        return out

    def unload(self) -> None:
        self.session = None
