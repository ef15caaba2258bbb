"""torch backend: TorchScript (``torch.jit.save``, model.pt) or ExportedProgram (``torch.export.save``, model.pt2).

Inputs are passed positionally in the order of the model config's ``input`` list (Triton's
pytorch backend convention); outputs (a tensor, or a tuple/list of tensors) map to the
config's ``output`` list in order. A dict output is matched by name.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from tuili.backends.base import Backend, int_parameter, model_tensor
from tuili.errors import ConfigError, InvalidInputError, KernelError, ModelLoadError
from tuili.model_config import ModelSpec

log = logging.getLogger(__name__)


def _exported_tensors(ep):
    """(inputs, outputs) of an ExportedProgram as (name, torch dtype or None, shape) from the graph's
    metadata; the dtype is None where the graph carries none (the config must then declare it)."""
    def meta(name, val):
        if val is None:
            return name, None, []
        return name, val.dtype, [int(d) if isinstance(d, int) else -1 for d in val.shape]

    placeholders = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = [meta(name, placeholders.get(name)) for name in ep.graph_signature.user_inputs]
    outs = next(n for n in ep.graph.nodes if n.op == "output").args[0]
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    outputs = [meta(f"output__{i}", getattr(o, "meta", {}).get("val")) for i, o in enumerate(outs)]
    return inputs, outputs


class TorchBackend(Backend):
    name = "pytorch"
    default_filename = "model.pt"
    parameter_keys = frozenset({"threads"})

    def load(self, model_dir: str, version_dir: str, config) -> None:
        import torch

        files = sorted(f for f in os.listdir(version_dir) if f.endswith((".pt", ".pt2", ".pth")))
        path = self.model_file(version_dir, config, candidates=("model.pt2", *files))
        threads = int_parameter(config, "threads")
        if threads:
            torch.set_num_threads(threads)
        self.exported = path.endswith(".pt2")
        try:
            if self.exported:
                ep = torch.export.load(path)
                self.module = ep.module()
                model_inputs, model_outputs = _exported_tensors(ep)
            else:
                self.module = torch.jit.load(path, map_location="cpu")
                self.module.eval()
                # TorchScript carries argument names but no types or shapes: the config declares them.
                model_inputs = [(a.name, None, []) for a in self.module.forward.schema.arguments[1:]]  # drop self
                model_outputs = []
        except Exception as e:
            raise ModelLoadError(f"torch could not load {path}: {e}") from e
        # The config, when it lists the tensors, names and types them; otherwise the model's metadata does.
        if config is not None and len(config.input):
            spec = ModelSpec(config)
            if len(spec.inputs) != len(model_inputs) and model_inputs:
                raise ConfigError(
                    f"model config of {model_dir} lists {len(spec.inputs)} inputs but {path} takes {len(model_inputs)} "
                    f"({', '.join(name for name, _, _ in model_inputs)})"
                )
            self.inputs = list(spec.inputs.values())
            self.outputs = list(spec.outputs.values()) or self._from_model(model_outputs, path)
        else:
            self.inputs = self._from_model(model_inputs, path)
            self.outputs = self._from_model(model_outputs, path)
        if not self.outputs:
            raise ConfigError(f"{path}: a TorchScript model needs its outputs listed in config.pbtxt (name, data_type, dims)")
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]
        self._path = path
        self._torch = torch

    @staticmethod
    def _from_model(tensors, path: str):
        untyped = [name for name, dtype, _ in tensors if dtype is None]
        if untyped:
            raise ConfigError(f"{path} does not say the type of {', '.join(untyped)}; list the model's inputs and "
                              f"outputs (name, data_type, dims) in config.pbtxt")
        return [model_tensor(path, name, dtype, shape) for name, dtype, shape in tensors]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        try:
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) if feeds[n].dtype != object else feeds[n] for n in self._input_names]
        except KeyError as e:
            raise InvalidInputError(f"torch model {self._path}: missing input {e.args[0]!r}") from None
        try:
            with torch.inference_mode():
                out = self.module(*args)
        except Exception as e:
            raise KernelError(f"torch model {self._path} failed: {e}") from e
        if isinstance(out, dict):
            return {k: v.detach().numpy() for k, v in out.items() if k in self._output_names}
        if not isinstance(out, (list, tuple)):
            out = [out]
        if len(out) < len(self._output_names):
            raise KernelError(f"torch model {self._path} returned {len(out)} outputs, config lists {len(self._output_names)}")
        return {n: t.detach().numpy() for n, t in zip(self._output_names, out)}

    def unload(self) -> None:
        self.module = None
