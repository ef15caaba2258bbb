"""One interface for every engine the server can run.

A backend instance is one loaded copy of one model version. The server (an
instance group of N) creates N backend instances and calls ``infer`` from N
worker threads, one thread per instance, so a backend never sees two calls at
once on the same instance. The server never knows which engine runs.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import numpy as np

from tuili.dtypes import UnknownDTypeError
from tuili.errors import ConfigError, KernelError, ModelLoadError, TuiliError
from tuili.ir.serde import tensor_protos
from tuili.model_config import TensorSpec
from tuili.model_config.paths import resolve_inside

log = logging.getLogger(__name__)


class Backend:
    """Base class: ``load`` once, then ``infer`` many times, ``unload`` at the end.

    Subclasses set ``inputs``/``outputs`` (list[TensorSpec]) in ``load``.
    ``wants_request_list``: if True the scheduler calls ``infer_many`` with the
    un-merged requests of a batch (python backend: Triton's execute(requests))
    instead of concatenating them into one ``infer`` call.
    """

    name = "base"
    default_filename = "model"
    wants_request_list = False
    #: responses go through a response sender, zero or many per request (model_transaction_policy.decoupled)
    decoupled = False
    #: keys of the config's ``parameters`` this backend reads; any other key is refused at load
    #: (tuili.model_config.support). None: every key is the model's own (a python model.py reads
    #: its parameters from args["model_config"]).
    parameter_keys: frozenset[str] | None = frozenset()

    def __init__(self) -> None:
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.model_name = ""
        self.instance_index = 0
        self.instance_count = 1
        #: the server's --allow-paths-outside-repository: files may resolve outside the model directory
        self.allow_paths_outside = False

    # -- lifecycle --------------------------------------------------------------------------------
    def load(self, model_dir: str, version_dir: str, config) -> None:
        """Load the model found in ``version_dir`` (config may be partial: autocomplete runs after)."""
        raise NotImplementedError

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def infer_many(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray] | BaseException]:
        """Run several requests; the default runs them one by one. An entry may be an exception
        (that request failed, the others did not)."""
        out: list = []
        for feeds in requests:
            try:
                out.append(self.infer(feeds))
            except Exception as e:  # one bad request must not fail the others
                out.append(e)
        return out

    def infer_decoupled(self, requests: list[dict[str, np.ndarray]], emit, cancelled) -> None:
        """Run the requests of a decoupled model (``decoupled`` True): each gets zero or more responses through
        ``emit(index, outputs | None, error | None, final)``, the last with ``final`` True; returns once every
        request had its final one. ``cancelled(index)`` says whether that request's client went away."""
        raise NotImplementedError(f"the {self.name} backend has no decoupled models")

    def unload(self) -> None:
        pass

    # -- helpers ----------------------------------------------------------------------------------
    def model_file(self, version_dir: str, config, candidates: tuple[str, ...] = ()) -> str:
        """Path of the model file: config.default_model_filename, else the backend default, else any
        candidate; symlinks resolved, and refused if it leaves the model directory (the parent of
        ``version_dir``) unless ``allow_paths_outside``."""
        root = os.path.dirname(version_dir)
        names = []
        fname = getattr(config, "default_model_filename", "") if config is not None else ""
        if fname:  # refused when it leaves the model directory, whether or not the file is there
            resolve_inside(root, fname, relative_to=version_dir, field="default_model_filename",
                           allow_outside=self.allow_paths_outside)
            names.append(fname)
        names.append(self.default_filename)
        names.extend(candidates)
        for n in names:
            p = os.path.join(version_dir, n)
            if os.path.exists(p):
                return resolve_inside(root, n, relative_to=version_dir, allow_outside=self.allow_paths_outside)
        raise ModelLoadError(
            f"{self.name} backend: no model file in {version_dir} (looked for {', '.join(dict.fromkeys(names))}); "
            f"put the model there or set default_model_filename in config.pbtxt"
        )


def config_parameter(config, key: str, default: str | None = None) -> str | None:
    """String value of ``parameters { key: "..." value: { string_value: "..." } }`` in a model config."""
    if config is None:
        return default
    try:
        params = config.parameters
    except AttributeError:
        return default
    if key in params:
        return params[key].string_value
    return default


def int_parameter(config, key: str, default: int | None = None) -> int | None:
    """Integer value of a config parameter (``default`` when absent or empty); anything else is a
    ConfigError naming the parameter."""
    v = config_parameter(config, key)
    if v in (None, ""):
        return default
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"model config parameter {key!r} must be an integer, got {v!r}") from None


# backend name -> module path, class name
_BACKENDS = {
    "onnxruntime": ("tuili.backends.onnxruntime", "OnnxRuntimeBackend"),
    "pytorch": ("tuili.backends.torch", "TorchBackend"),
    "python": ("tuili.backends.python", "PythonBackend"),
    "tuili": ("tuili.backends.tuili", "TuiliBackend"),
    "openvino": ("tuili.backends.openvino", "OpenVINOBackend"),
}
# Triton platform names -> backend name
PLATFORMS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "pytorch_torchscript": "pytorch",
    "torch_exported_program": "pytorch",
}
# backend name -> platform reported in model metadata
BACKEND_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch", "python": "python", "tuili": "tuili_onnx",
                    "openvino": "openvino"}
BACKEND_ALIASES = {"torch": "pytorch", "libtorch": "pytorch", "onnx": "onnxruntime", "ort": "onnxruntime"}


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def resolve_backend_name(backend: str, platform: str, version_dir: str | None = None) -> str:
    """Backend to use from config.backend / config.platform, else guessed from the files in version_dir."""
    if backend:
        b = BACKEND_ALIASES.get(backend, backend)
        if b not in _BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; available: {', '.join(backend_names())}")
        return b
    if platform:
        if platform in PLATFORMS:
            return PLATFORMS[platform]
        raise ConfigError(f"unknown platform {platform!r}; known platforms: {', '.join(sorted(PLATFORMS))}, ensemble")
    if version_dir and os.path.isdir(version_dir):
        files = set(os.listdir(version_dir))
        if "model.onnx" in files or any(f.endswith(".onnx") for f in files):
            return "onnxruntime"
        if "model.py" in files:
            return "python"
        if any(f.endswith((".pt", ".pt2", ".pth")) for f in files):
            return "pytorch"
        if "model.xml" in files:
            return "openvino"
    raise ConfigError(
        f"cannot tell which backend runs the model in {version_dir}: set backend: \"onnxruntime\"|\"pytorch\"|"
        f"\"python\"|\"tuili\"|\"openvino\" (or platform) in config.pbtxt"
    )


def backend_class(name: str) -> type[Backend]:
    try:
        mod_name, cls_name = _BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(backend_names())}") from None
    return getattr(importlib.import_module(mod_name), cls_name)


def create_backend(name: str) -> Backend:
    return backend_class(name)()


def model_tensor(path: str, name: str, dtype: Any, shape) -> TensorSpec:
    """TensorSpec of a tensor the model file at ``path`` declares (any dtype spelling, dynamic
    dimensions as None, a symbol or -1); a type the V2 protocol cannot carry is a ModelLoadError
    naming the file, the tensor and the type."""
    try:
        return TensorSpec(name, dtype, list(shape or []))
    except UnknownDTypeError as e:
        raise ModelLoadError(f"{path}: tensor {name!r} cannot be served: {e}") from None


def bytes_to_str(arr: np.ndarray) -> np.ndarray:
    """Object array of bytes -> object array of str (what ONNX engines take for string tensors)."""
    out = np.empty(arr.shape, dtype=object)
    flat = out.reshape(-1)
    for i, x in enumerate(arr.reshape(-1)):
        flat[i] = x.decode("utf-8", "surrogateescape") if isinstance(x, (bytes, bytearray)) else x
    return out


def str_to_bytes(arr: np.ndarray) -> np.ndarray:
    """Object/str array -> object array of bytes (the server's BYTES convention)."""
    out = np.empty(arr.shape, dtype=object)
    flat = out.reshape(-1)
    for i, x in enumerate(arr.reshape(-1)):
        flat[i] = x.encode("utf-8", "surrogateescape") if isinstance(x, str) else x
    return out


def check_external_data(path: str, model_dir: str) -> None:
    """Refuse an ONNX model whose external data (tensors stored in other files) lives outside
    ``model_dir``: each location is resolved, symlinks followed, from the model file's directory,
    as onnxruntime and tuili.load read it."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - the engine then reports an unreadable model in its own words
        log.debug("external-data check skipped: %s does not parse: %s", path, e)
        return
    for tensor in tensor_protos(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            resolve_inside(model_dir, location, relative_to=os.path.dirname(path),
                           field=f"external data of tensor {tensor.name!r} in {os.path.basename(path)}")


class OnnxSessionBackend(Backend):
    """Shared by the engines with onnxruntime's calling convention (onnxruntime, tuili): subclasses
    create ``self.session`` in ``open_session`` and say how their errors map in ``map_error``."""

    default_filename = "model.onnx"

    def open_session(self, path: str, config):  # pragma: no cover - abstract
        raise NotImplementedError

    def map_error(self, e: Exception) -> Exception:
        return KernelError(f"{self.name} failed running {self._path}: {e}")

    def load(self, model_dir: str, version_dir: str, config) -> None:
        onnx_files = tuple(sorted(f for f in os.listdir(version_dir) if f.endswith(".onnx")))
        path = self.model_file(version_dir, config, candidates=onnx_files)
        if not self.allow_paths_outside:
            check_external_data(path, model_dir)
        self._path = path
        self.session = self.open_session(path, config)
        self.inputs = [model_tensor(path, a.name, a.type, a.shape) for a in self.session.get_inputs()]
        self.outputs = [model_tensor(path, a.name, a.type, a.shape) for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self._string_inputs = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._string_outputs = {s.name for s in self.outputs if s.datatype == "BYTES"}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._string_inputs:
            feeds = {k: (bytes_to_str(v) if k in self._string_inputs else v) for k, v in feeds.items()}
        try:
            results = self.session.run(self._output_names, feeds)
        except TuiliError:
            raise
        except Exception as e:  # noqa: BLE001 - engine-specific exception types
            raise self.map_error(e) from e
        out = dict(zip(self._output_names, results))
        for k in self._string_outputs:
            out[k] = str_to_bytes(out[k])
        return out

    def unload(self) -> None:
        self.session = None
