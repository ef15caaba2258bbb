"""tuili native backend: the engine's own ``tuili.InferenceSession`` (onnxruntime calling convention).

Model config parameters: ``opt_level`` (0-3), ``threads`` and ``precision`` (fp32, bf16, auto:
``tuili.runtime.precision``)."""
from __future__ import annotations

from tuili.backends.base import OnnxSessionBackend, config_parameter, int_parameter
from tuili.errors import ModelLoadError, TuiliError


class TuiliBackend(OnnxSessionBackend):
    name = "tuili"
    parameter_keys = frozenset({"opt_level", "threads", "precision"})

    def open_session(self, path: str, config):
        from tuili.runtime.session import InferenceSession

        kwargs: dict = {}
        for key in ("opt_level", "threads"):
            value = int_parameter(config, key)
            if value:
                kwargs[key] = value
        precision = config_parameter(config, "precision")
        if precision:
            kwargs["precision"] = precision
        try:
            return InferenceSession(path, **kwargs)
        except TuiliError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"tuili engine could not load {path}: {e}") from e
