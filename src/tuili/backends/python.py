"""python backend: a user ``model.py`` defining ``class TritonPythonModel`` with
``initialize(args)``, ``execute(requests) -> responses`` and ``finalize()``, exactly like
Triton's python backend (``import triton_python_backend_utils as pb_utils`` works).

Meant for pre- and post-processing steps (decode images, tokenize, top-k labels) in ensembles.
The server runs each instance of a python model in a worker process of its own by default
(tuili.backends.worker): a model that crashes, exits or hangs cannot take the server with it.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import threading

import numpy as np

from tuili.backends import pb_utils
from tuili.backends.base import Backend
from tuili.errors import ConfigError, InvalidInputError, KernelError, ModelLoadError, ModelNotFoundError, ServerBusyError
from tuili.model_config import ModelSpec, config_to_json

log = logging.getLogger(__name__)
_load_lock = threading.Lock()
_counter = 0


def _error_from(model: str, err) -> Exception:
    if isinstance(err, pb_utils.TritonError):
        code = err.code()
        msg = f"model {model!r}: {err.message()}"
        if code == pb_utils.TritonError.INVALID_ARG:
            return InvalidInputError(msg)
        if code == pb_utils.TritonError.NOT_FOUND:
            return ModelNotFoundError(msg)
        if code == pb_utils.TritonError.UNAVAILABLE:
            return ServerBusyError(msg)
        return KernelError(msg)
    if isinstance(err, BaseException):
        return KernelError(f"model {model!r}: python model raised {type(err).__name__}: {err}")
    return KernelError(f"model {model!r}: {err}")


class PythonBackend(Backend):
    name = "python"
    default_filename = "model.py"
    wants_request_list = True
    parameter_keys = None  # the model's own: model.py reads them from args["model_config"]

    def load(self, model_dir: str, version_dir: str, config) -> None:
        global _counter
        path = self.model_file(version_dir, config)
        sys.modules.setdefault("triton_python_backend_utils", pb_utils)
        with _load_lock:
            _counter += 1
            mod_name = f"tuili_user_model_{_counter}"
        try:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except Exception as e:
            raise ModelLoadError(f"python backend could not import {path}: {type(e).__name__}: {e}") from e
        cls = getattr(module, "TritonPythonModel", None)
        if cls is None:
            raise ModelLoadError(f"{path} defines no class TritonPythonModel; add one with initialize/execute/finalize")
        if config is None or not len(config.output):
            raise ConfigError(f"python model {model_dir}: config.pbtxt must list the inputs and outputs")
        self.model_name = config.name or os.path.basename(model_dir)
        self.model = cls()
        args = {
            "model_config": json.dumps(config_to_json(config)),
            "model_instance_kind": "CPU",
            "model_instance_name": f"{self.model_name}_{self.instance_index}",
            "model_instance_device_id": "0",
            "model_repository": model_dir,
            "model_version": os.path.basename(version_dir),
            "model_name": self.model_name,
        }
        if hasattr(self.model, "initialize"):
            try:
                self.model.initialize(args)
            except Exception as e:
                raise ModelLoadError(f"{path}: TritonPythonModel.initialize failed: {type(e).__name__}: {e}") from e
        spec = ModelSpec(config)
        self.inputs, self.outputs = list(spec.inputs.values()), list(spec.outputs.values())
        self._output_names = [o.name for o in self.outputs]
        self._path = path
        self.decoupled = bool(config.model_transaction_policy.decoupled)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        r = self.infer_many([feeds])[0]
        if isinstance(r, BaseException):
            raise r
        return r

    def infer_many(self, requests):
        reqs = [pb_utils.InferenceRequest([pb_utils.Tensor(k, v) for k, v in f.items()], self._output_names) for f in requests]
        try:
            responses = self.model.execute(reqs)
        except Exception as e:
            err = _error_from(self.model_name, e)
            return [err] * len(requests)
        if responses is None or len(responses) != len(requests):
            err = KernelError(f"model {self.model_name!r}: execute() returned {0 if responses is None else len(responses)} "
                              f"responses for {len(requests)} requests; return one InferenceResponse per request")
            return [err] * len(requests)
        out = []
        for resp in responses:
            if resp.has_error():
                out.append(_error_from(self.model_name, resp.error()))
            else:
                out.append({t.name(): t.as_numpy() for t in resp.output_tensors()})
        return out

    def infer_decoupled(self, requests, emit, cancelled) -> None:
        """Triton's decoupled mode: ``execute`` returns None and answers through each request's response sender,
        from execute or from threads of the model's own; this returns once every request had its final response."""
        done = threading.Condition()
        finals = [False] * len(requests)

        def sender(i: int) -> pb_utils.InferenceResponseSender:
            def send(resp, final: bool) -> None:
                if resp is None:
                    emit(i, None, None, final)
                elif resp.has_error():
                    emit(i, None, _error_from(self.model_name, resp.error()), final)
                else:
                    emit(i, {t.name(): t.as_numpy() for t in resp.output_tensors()}, None, final)
                if final:
                    with done:
                        finals[i] = True
                        done.notify_all()
            return pb_utils.InferenceResponseSender(send, lambda: cancelled(i))

        reqs = []
        for i, f in enumerate(requests):
            r = pb_utils.InferenceRequest([pb_utils.Tensor(k, v) for k, v in f.items()], self._output_names)
            r._sender, r._cancelled = sender(i), (lambda i=i: cancelled(i))
            reqs.append(r)
        try:
            returned = self.model.execute(reqs)
            failure = None if returned is None else KernelError(
                f"model {self.model_name!r} is decoupled: execute() must return None and send the responses through "
                f"request.get_response_sender()")
        except Exception as e:
            failure = _error_from(self.model_name, e)
        if failure is not None:  # the requests not answered in full get the error as their final response
            for i, r in enumerate(reqs):
                with done:
                    if finals[i]:
                        continue
                    finals[i] = r._sender._final = True
                emit(i, None, failure, True)
        with done:
            done.wait_for(lambda: all(finals))

    def unload(self) -> None:
        fin = getattr(getattr(self, "model", None), "finalize", None)
        if fin is not None:
            try:
                fin()
            except Exception:  # finalize errors must not block the unload
                log.exception("python model %s: finalize failed", self.model_name)
        self.model = None
