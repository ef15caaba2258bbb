"""tuili native backend: the engine's own ``tuili.InferenceSession`` (onnxruntime calling convention)."""
from __future__ import annotations

import logging
import os

import numpy as np

from tuili.backends.base import Backend, TensorSpec, bytes_to_str, str_to_bytes, config_parameter, dims_from_onnx, onnx_type_to_v2
from tuili.errors import KernelError, ModelLoadError, TuiliError

log = logging.getLogger(__name__)


def session_class():
    """``tuili.InferenceSession`` or None if the engine is not importable yet."""
    try:
        import tuili

        return getattr(tuili, "InferenceSession", None)
    except ImportError:  # pragma: no cover
        return None


def _type_to_v2(t) -> str:
    if isinstance(t, str):
        return onnx_type_to_v2(t)
    from tuili.serve.types import numpy_to_v2

    return numpy_to_v2(t)


class TuiliBackend(Backend):
    name = "tuili"
    default_filename = "model.onnx"

    def load(self, model_dir: str, version_dir: str, config) -> None:
        cls = session_class()
        if cls is None:
            raise ModelLoadError("the tuili engine (tuili.InferenceSession) is not available in this build; use backend: \"onnxruntime\"")
        path = self.model_file(version_dir, config, candidates=tuple(sorted(f for f in os.listdir(version_dir) if f.endswith(".onnx"))))
        kwargs = {"engine": "tuili"}
        level = config_parameter(config, "opt_level")
        if level:
            kwargs["opt_level"] = int(level)
        threads = config_parameter(config, "threads")
        if threads:
            kwargs["threads"] = int(threads)
        try:
            self.session = cls(path, **kwargs)
        except TuiliError:
            raise
        except Exception as e:
            raise ModelLoadError(f"tuili engine could not load {path}: {e}") from e
        self.inputs = [TensorSpec(a.name, _type_to_v2(a.type), dims_from_onnx(a.shape)) for a in self.session.get_inputs()]
        self.outputs = [TensorSpec(a.name, _type_to_v2(a.type), dims_from_onnx(a.shape)) for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self.outputs if s.datatype == "BYTES"}
        self._path = path

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._string_inputs:
            feeds = {k: (bytes_to_str(v) if k in self._string_inputs else v) for k, v in feeds.items()}
        try:
            results = self.session.run(self._output_names, feeds)
        except TuiliError:
            raise
        except Exception as e:
            raise KernelError(f"tuili engine failed running {self._path}: {e}") from e
        out = dict(zip(self._output_names, results))
        for k in self._string_outputs:
            out[k] = str_to_bytes(out[k])
        return out

    def unload(self) -> None:
        self.session = None

