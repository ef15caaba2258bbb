"""OpenVINO backend (an optional extra: ``pip install tuili[openvino]``), in the spirit of Triton's
openvino backend: ``model.xml`` (with its ``model.bin``) or an ``.onnx`` file in the version
directory, compiled once per instance for the CPU.

Config parameters (string values), as Triton's backend names them:
``PERFORMANCE_HINT`` (LATENCY, THROUGHPUT, CUMULATIVE_THROUGHPUT), ``NUM_STREAMS`` (AUTO or a
number), ``INFERENCE_NUM_THREADS``, ``COMPILATION_NUM_THREADS``, ``INFERENCE_PRECISION_HINT``
(f32, bf16, f16), ``HINT_BF16`` (YES: the same as INFERENCE_PRECISION_HINT bf16), ``TARGET_DEVICE``
(CPU), ``RESHAPE_IO_LAYERS`` (YES: input shapes from the config). Any other key is refused.

OpenVINO's CPU default precision is bf16 on a CPU with native bf16 (AVX512_BF16, AMX): the backend
keeps OpenVINO's default, as Triton's does, and logs the precision it compiled for. A model that
batches (max_batch_size > 0) gets a dynamic first dimension on every input so dynamic batching works.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from tuili.backends.base import Backend, check_external_data, config_parameter, int_parameter, model_tensor
from tuili.errors import ConfigError, InvalidInputError, KernelError, ModelLoadError
from tuili.model_config.paths import resolve_inside

log = logging.getLogger(__name__)

_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ModelLoadError("the openvino backend needs OpenVINO: pip install 'tuili[openvino]'") from None
    return openvino


class OpenVINOBackend(Backend):
    name = "openvino"
    default_filename = "model.xml"
    parameter_keys = frozenset({"PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS",
                                "INFERENCE_PRECISION_HINT", "HINT_BF16", "TARGET_DEVICE", "RESHAPE_IO_LAYERS"})

    def load(self, model_dir: str, version_dir: str, config) -> None:
        ov = _openvino()
        onnx_files = tuple(sorted(f for f in os.listdir(version_dir) if f.endswith(".onnx")))
        path = self.model_file(version_dir, config, candidates=onnx_files)
        self._path = path
        core = ov.Core()
        properties = self._properties(core, config)
        model = self._read(core, path, model_dir)
        self._reshape(ov, model, config)
        try:
            self._compiled = core.compile_model(model, "CPU", properties)
        except RuntimeError as e:
            raise ModelLoadError(f"OpenVINO could not compile {path}: {_first_line(e)}") from None
        self._request = self._compiled.create_infer_request()
        self.precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        log.info("openvino: %s compiled for CPU, precision %s, %s streams", os.path.basename(path), self.precision,
                 self._compiled.get_property("NUM_STREAMS"))
        self.inputs = [self._spec(p) for p in self._compiled.inputs]
        self.outputs = [self._spec(p) for p in self._compiled.outputs]
        self._out_ports = [(p.get_any_name(), p) for p in self._compiled.outputs]

    def _spec(self, port):
        shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        return model_tensor(self._path, port.get_any_name(), port.get_element_type().to_dtype(), shape)

    def _read(self, core, path: str, model_dir: str):
        """The model OpenVINO reads from ``path``, once the files it reads with it (an IR's weights, an ONNX
        model's external data) are known to stay inside ``model_dir``."""
        if path.endswith(".xml"):
            weights = path[:-4] + ".bin"
            if not os.path.exists(weights):
                raise ModelLoadError(f"openvino backend: {path} has no weights file {weights}; put model.bin beside model.xml")
            resolve_inside(model_dir, weights, field=f"weights of {os.path.basename(path)}",
                           allow_outside=self.allow_paths_outside)
        elif not self.allow_paths_outside:
            check_external_data(path, model_dir)
        try:
            return core.read_model(path)
        except RuntimeError as e:
            raise ModelLoadError(f"OpenVINO could not read {path}: {_first_line(e)}") from None

    def _properties(self, core, config) -> dict:
        props: dict = {}
        device = config_parameter(config, "TARGET_DEVICE") or "CPU"
        if device != "CPU":
            raise ConfigError(f"model config parameter TARGET_DEVICE {device!r}: this server runs OpenVINO on the CPU only "
                              f"(devices here: {', '.join(core.available_devices)})")
        hint = config_parameter(config, "PERFORMANCE_HINT")
        if hint:
            if hint not in _HINTS:
                raise ConfigError(f"model config parameter PERFORMANCE_HINT must be one of {', '.join(_HINTS)}, got {hint!r}")
            props["PERFORMANCE_HINT"] = hint
        streams = config_parameter(config, "NUM_STREAMS")
        if streams:
            if streams != "AUTO" and not (streams.isdigit() and int(streams) > 0):
                raise ConfigError(f"model config parameter NUM_STREAMS must be AUTO or a positive number, got {streams!r}")
            props["NUM_STREAMS"] = streams
        # N instances share the cores, as the onnxruntime backend's intra-op threads do
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = int_parameter(config, "INFERENCE_NUM_THREADS", max(1, cores // max(1, self.instance_count)))
        if threads < 0:
            raise ConfigError(f"model config parameter INFERENCE_NUM_THREADS must be >= 0, got {threads}")
        props["INFERENCE_NUM_THREADS"] = threads
        compile_threads = int_parameter(config, "COMPILATION_NUM_THREADS")
        if compile_threads is not None:
            if compile_threads < 0:
                raise ConfigError(f"model config parameter COMPILATION_NUM_THREADS must be >= 0, got {compile_threads}")
            props["COMPILATION_NUM_THREADS"] = compile_threads
        precision = config_parameter(config, "INFERENCE_PRECISION_HINT")
        bf16 = config_parameter(config, "HINT_BF16")
        if bf16:
            if bf16 not in ("YES", "NO"):
                raise ConfigError(f"model config parameter HINT_BF16 must be YES or NO, got {bf16!r}")
            if precision:
                raise ConfigError("model config sets both HINT_BF16 and INFERENCE_PRECISION_HINT: keep one")
            precision = "bf16" if bf16 == "YES" else "f32"
        if precision:
            if precision.lower() not in _PRECISIONS:
                raise ConfigError(f"model config parameter INFERENCE_PRECISION_HINT must be one of f32, bf16, f16, got {precision!r}")
            precision = _PRECISIONS[precision.lower()]
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if precision.upper() not in caps and precision != "f32":
                raise ConfigError(f"INFERENCE_PRECISION_HINT {precision}: this CPU has no native {precision} "
                                  f"(OpenVINO's CPU capabilities: {', '.join(caps)}); use f32")
            props["INFERENCE_PRECISION_HINT"] = precision
        return props

    def _reshape(self, ov, model, config) -> None:
        """Inputs from the config (RESHAPE_IO_LAYERS), else a dynamic batch dimension when batching."""
        reshape = config_parameter(config, "RESHAPE_IO_LAYERS") or "NO"
        if reshape not in ("YES", "NO"):
            raise ConfigError(f"model config parameter RESHAPE_IO_LAYERS must be YES or NO, got {reshape!r}")
        batching = getattr(config, "max_batch_size", 0) > 0
        shapes = {}
        if reshape == "YES":
            declared = {t.name: list(t.dims) for t in getattr(config, "input", [])}
            for port in model.inputs:
                name = port.get_any_name()
                if name not in declared:
                    raise ConfigError(f"RESHAPE_IO_LAYERS: the config declares no input {name!r} of {self._path}")
                shapes[name] = ov.PartialShape(([-1] if batching else []) + declared[name])
        elif batching:
            for port in model.inputs:
                dims = list(port.get_partial_shape())
                if dims and dims[0].is_static:
                    shapes[port.get_any_name()] = ov.PartialShape([ov.Dimension()] + dims[1:])
        if shapes:
            try:
                model.reshape(shapes)
            except RuntimeError as e:
                raise ModelLoadError(f"OpenVINO cannot give {self._path} the input shapes {shapes}: {_first_line(e)}") from None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._request.infer(feeds)
        except (RuntimeError, TypeError, ValueError) as e:
            msg = _first_line(e)
            if any(m in msg.lower() for m in ("shape", "dimension", "element type", "precision", "port")):
                raise InvalidInputError(f"OpenVINO cannot run {os.path.basename(self._path)} on these inputs: {msg}") from None
            raise KernelError(f"OpenVINO failed running {self._path}: {msg}") from None
        return {name: np.array(result[port], copy=True) for name, port in self._out_ports}

    def unload(self) -> None:
        self._request = self._compiled = None


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return next((ln for ln in lines if "Exception from" not in ln), lines[0] if lines else type(e).__name__)
