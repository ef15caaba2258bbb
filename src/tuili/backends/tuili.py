"""tuili native backend: the engine's own ``tuili.InferenceSession`` (onnxruntime calling convention).

Model config parameters: ``opt_level`` (0-3) and ``threads``."""
from __future__ import annotations

from tuili.backends.base import OnnxSessionBackend, int_parameter
from tuili.errors import ModelLoadError, TuiliError


class TuiliBackend(OnnxSessionBackend):
    name = "tuili"
    parameter_keys = frozenset({"opt_level", "threads"})

    def open_session(self, path: str, config):
        from tuili.runtime.session import InferenceSession

        kwargs = {}
        for key in self.parameter_keys:
            value = int_parameter(config, key)
            if value:
                kwargs[key] = value
        try:
            return InferenceSession(path, **kwargs)
        except TuiliError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"tuili engine could not load {path}: {e}") from e
