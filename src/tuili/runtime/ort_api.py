"""The parts of onnxruntime's Python API beyond ``run``: model metadata, run options, io binding and
OrtValue-like tensors, for ``tuili.InferenceSession`` (session.py) on tuili's engine.

    meta = sess.get_modelmeta()                  # .producer_name, .custom_metadata_map, ...
    ro = RunOptions(); ro.logid = "req-7"        # or onnxruntime.RunOptions()
    sess.run(None, feeds, ro)
    b = sess.io_binding(); b.bind_cpu_input("x", x); b.bind_output("y")
    sess.run_with_iobinding(b); (y,) = b.copy_outputs_to_cpu()

Everything lives in host memory (tuili runs on the CPU): a device other than "cpu" or a raw buffer
pointer is refused with an error naming it, as is any run option tuili cannot honour.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tuili import dtypes
from tuili.errors import ConfigError, InvalidInputError, TuiliError

if TYPE_CHECKING:
    from tuili.ir import Graph
    from tuili.runtime.session import InferenceSession

log = logging.getLogger(__name__)
run_log = logging.getLogger("tuili.runtime.run")  # per-run messages, filtered by RunOptions.log_severity_level

# onnxruntime's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
_SEVERITY = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.CRITICAL}


class RunTerminatedError(TuiliError):
    """A run stopped because its RunOptions.terminate was set."""


# ----------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ModelMetadata:
    """onnxruntime's ModelMetadata fields, read from the model."""

    producer_name: str = ""
    graph_name: str = ""
    domain: str = ""
    description: str = ""
    graph_description: str = ""
    version: int = 0
    custom_metadata_map: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: Graph) -> ModelMetadata:
        return cls(graph.producer_name, graph.name, graph.model_domain, graph.model_doc_string, graph.doc_string,
                   graph.model_version, dict(graph.metadata_props))


# ----------------------------------------------------------------------------- run options
class RunOptions:
    """onnxruntime.RunOptions for tuili's engine (an ``onnxruntime.RunOptions`` is accepted too).

    ``log_severity_level`` (-1: the session's) and ``log_verbosity_level`` govern this run's messages
    (logger ``tuili.runtime.run``), ``logid`` tags them; ``terminate`` set before or during a run stops
    it between two steps with RunTerminatedError. ``only_execute_path_to_fetches`` is refused."""

    def __init__(self) -> None:
        self.log_severity_level = -1
        self.log_verbosity_level = 0
        self.logid = ""
        self.terminate = False
        self.only_execute_path_to_fetches = False
        self._config: dict[str, str] = {}

    def add_run_config_entry(self, key: str, value: str) -> None:
        raise ConfigError(f"run config entry {key!r} has no equivalent in tuili's engine; run without it")

    def get_run_config_entry(self, key: str) -> str:
        raise InvalidInputError(f"run config entry {key!r} is not set")


@dataclass(frozen=True)
class RunSettings:
    """What a run does with its RunOptions: the level its messages log at and its tag."""

    options: Any = None
    level: int = logging.DEBUG
    tag: str = ""

    @property
    def terminate(self) -> bool:
        return bool(self.options is not None and self.options.terminate)

    def check_terminate(self, where: str) -> None:
        if self.terminate:
            raise RunTerminatedError(f"run{' ' + repr(self.tag) if self.tag else ''} stopped {where}: "
                                     "RunOptions.terminate is set; clear it to run again")

    def log(self, msg: str, *args: Any) -> None:
        """One of this run's messages, at its verbosity, when its severity lets it through."""
        if self.level <= logging.INFO and run_log.isEnabledFor(self.level):
            run_log.log(self.level, "[%s] " + msg, self.tag or "run", *args)


def run_settings(run_options: Any) -> RunSettings:
    """Check ``run_options`` (tuili's or onnxruntime's RunOptions) and return what the run honours."""
    if run_options is None:
        return RunSettings()
    for name in ("log_severity_level", "log_verbosity_level", "logid", "terminate"):
        if not hasattr(run_options, name):
            raise ConfigError(f"run_options of type {type(run_options).__name__} has no field {name!r}: pass a "
                              "tuili.runtime.RunOptions or an onnxruntime.RunOptions")
    if getattr(run_options, "only_execute_path_to_fetches", False):
        raise ConfigError("RunOptions.only_execute_path_to_fetches is not honoured by tuili's engine (a plan runs "
                          "every step); leave it False")
    if getattr(run_options, "training_mode", False):
        raise ConfigError("RunOptions.training_mode is not honoured by tuili's engine (inference only)")
    severity = int(run_options.log_severity_level)
    if severity not in (-1, *_SEVERITY):
        raise ConfigError(f"RunOptions.log_severity_level {severity} is not one of -1 (session default), 0..4")
    # severity 0 (verbose) with verbosity >= 1 logs the run's messages at INFO, else at DEBUG
    level = logging.INFO if severity == 0 and int(run_options.log_verbosity_level) >= 1 else logging.DEBUG
    return RunSettings(run_options, level, str(run_options.logid))


def ort_run_options(run_options: Any) -> Any:
    """``run_options`` as onnxruntime's own run takes it (engine="onnxruntime"): tuili's RunOptions copied
    into an onnxruntime.RunOptions."""
    if run_options is None or not isinstance(run_options, RunOptions):
        return run_options
    import onnxruntime as ort

    out = ort.RunOptions()
    for name in ("log_severity_level", "log_verbosity_level", "logid", "terminate", "only_execute_path_to_fetches"):
        setattr(out, name, getattr(run_options, name))
    return out


# ----------------------------------------------------------------------------- session arguments
def positional_arguments(engine: Any, opt_level: Any, threads: Any, sess_options: Any, providers: Any,
                         provider_options: Any) -> tuple:
    """onnxruntime's positional form ``InferenceSession(path, sess_options, providers, provider_options)``
    mapped onto tuili's ``(model, engine, opt_level, threads)``: a non-string second argument is the
    SessionOptions, then providers and provider options follow. Returns (engine, opt_level, threads,
    sess_options, providers, provider_options)."""
    if engine is None or isinstance(engine, str):
        return engine, opt_level, threads, sess_options, providers, provider_options
    if sess_options is not None:
        raise TypeError("InferenceSession() got sess_options both positionally and by keyword")
    if opt_level is not None and not isinstance(opt_level, int):
        if providers is not None:
            raise TypeError("InferenceSession() got providers both positionally and by keyword")
        providers, opt_level = opt_level, None
    if threads is not None and not isinstance(threads, int):
        if provider_options is not None:
            raise TypeError("InferenceSession() got provider_options both positionally and by keyword")
        provider_options, threads = threads, None
    return "tuili", opt_level, threads, engine, providers, provider_options


# ----------------------------------------------------------------------------- values
def _check_cpu(device_type: Any, what: str) -> None:
    device = str(device_type).lower()
    if device not in ("cpu", "ortdevice.cpu", ""):
        raise ConfigError(f"{what}: device {device_type!r} is not supported: tuili runs on the CPU; use 'cpu'")


class OrtValue:
    """A tensor in host memory with onnxruntime's OrtValue methods (numpy(), shape(), ...)."""

    def __init__(self, array: np.ndarray):
        self._array = array

    @classmethod
    def ortvalue_from_numpy(cls, array: Any, device_type: str = "cpu", device_id: int = 0) -> OrtValue:
        _check_cpu(device_type, "OrtValue.ortvalue_from_numpy")
        return cls(np.asarray(array))

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape: Any, element_type: Any = np.float32, device_type: str = "cpu",
                                     device_id: int = 0) -> OrtValue:
        _check_cpu(device_type, "OrtValue.ortvalue_from_shape_and_type")
        return cls(np.zeros(tuple(shape), dtype=_numpy_dtype(element_type)))

    def numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def data_type(self) -> str:
        return f"tensor({dtypes.from_numpy(self._array.dtype).name})"

    def element_type(self) -> type:
        return self._array.dtype.type

    def device_name(self) -> str:
        return "cpu"

    def is_tensor(self) -> bool:
        return True

    def has_value(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"OrtValue({self.data_type()}, shape={self.shape()})"


def _numpy_dtype(element_type: Any) -> np.dtype:
    if isinstance(element_type, int):
        return dtypes.from_onnx(element_type).to_numpy()
    return np.dtype(element_type)


def as_array(value: Any) -> Any:
    """A feed as the engine takes it: an OrtValue-like object (one with ``.numpy()``, such as
    onnxruntime's OrtValue) becomes its array; anything else is returned as it is."""
    if isinstance(value, np.ndarray):
        return value
    to_numpy = getattr(value, "numpy", None)
    if callable(to_numpy):
        return to_numpy()
    return value


# ----------------------------------------------------------------------------- io binding
class IOBinding:
    """onnxruntime's SessionIOBinding for tuili's engine: inputs bound by name, outputs by name
    (allocated by the run) or to a given OrtValue, whose array the result is copied into."""

    def __init__(self, session: InferenceSession):
        self._session = session
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, OrtValue | None] = {}  # name -> preallocated value, or None
        self._results: list[OrtValue] = []

    # inputs
    def bind_cpu_input(self, name: str, arr_on_cpu: Any) -> None:
        self._inputs[name] = np.asarray(as_array(arr_on_cpu))

    def bind_input(self, name: str, device_type: Any = "cpu", device_id: int = 0, element_type: Any = None,
                   shape: Any = None, buffer_ptr: Any = None) -> None:
        raise ConfigError(f"IOBinding.bind_input({name!r}, ...) binds a raw device buffer, which tuili cannot "
                          "read; use bind_cpu_input(name, array) or bind_ortvalue_input(name, value)")

    def bind_ortvalue_input(self, name: str, ortvalue: Any) -> None:
        self._inputs[name] = as_array(ortvalue)

    # outputs
    def bind_output(self, name: str, device_type: Any = "cpu", device_id: int = 0, element_type: Any = None,
                    shape: Any = None, buffer_ptr: Any = None) -> None:
        _check_cpu(device_type, f"IOBinding.bind_output({name!r})")
        if buffer_ptr is not None:
            raise ConfigError(f"IOBinding.bind_output({name!r}, buffer_ptr=...): tuili cannot write into a raw "
                              "buffer; bind an OrtValue with bind_ortvalue_output, or bind the name alone")
        if element_type is not None or shape is not None:
            value = OrtValue(np.empty(tuple(shape or ()), dtype=_numpy_dtype(element_type or np.float32)))
            self._outputs[name] = value
        else:
            self._outputs[name] = None
        self._check_output(name)

    def bind_ortvalue_output(self, name: str, ortvalue: Any) -> None:
        if not isinstance(ortvalue, OrtValue):
            ortvalue = OrtValue(as_array(ortvalue))
        self._outputs[name] = ortvalue
        self._check_output(name)

    def _check_output(self, name: str) -> None:
        known = [o.name for o in self._session.get_outputs()]
        if name not in known:
            del self._outputs[name]
            raise InvalidInputError(f"IOBinding.bind_output: {name!r} is not an output of the model; its outputs "
                                    f"are {known}")

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()

    def synchronize_inputs(self) -> None:  # host memory: nothing to wait for
        pass

    def synchronize_outputs(self) -> None:
        pass

    # results
    def get_outputs(self) -> list[OrtValue]:
        return list(self._results)

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [v.numpy().copy() for v in self._results]

    def run(self, run_options: Any = None) -> None:
        """Run the session on the bound inputs; the bound outputs hold the results."""
        if not self._outputs:
            raise InvalidInputError("IOBinding has no outputs bound: call bind_output(name) first")
        names = list(self._outputs)
        results = self._session.run(names, dict(self._inputs), run_options)
        out: list[OrtValue] = []
        for name, result in zip(names, results):
            target = self._outputs[name]
            if target is None:
                out.append(OrtValue(result))
                continue
            dest = target.numpy()
            if dest.shape != np.shape(result) or dest.dtype != np.asarray(result).dtype:
                raise InvalidInputError(f"IOBinding: output {name!r} is bound to a {dest.dtype} tensor of shape "
                                        f"{list(dest.shape)}, but the run produced {np.asarray(result).dtype} "
                                        f"{list(np.shape(result))}; bind it by name alone to let the run allocate it")
            np.copyto(dest, result)
            out.append(target)
        self._results = out
