"""torch backend: TorchScript (``torch.jit.save``, model.pt) or ExportedProgram (``torch.export.save``, model.pt2).

Inputs are passed positionally in the order of the model config's ``input`` list (Triton's
pytorch backend convention); outputs (a tensor, or a tuple/list of tensors) map to the
config's ``output`` list in order. A dict output is matched by name.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from tuili.backends.base import Backend, TensorSpec, config_parameter
from tuili.errors import ConfigError, InvalidInputError, KernelError, ModelLoadError

log = logging.getLogger(__name__)


def _torch_dtype_to_v2(dt) -> str:
    import torch

    table = {
        torch.float32: "FP32", torch.float64: "FP64", torch.float16: "FP16", torch.bfloat16: "BF16",
        torch.int8: "INT8", torch.int16: "INT16", torch.int32: "INT32", torch.int64: "INT64",
        torch.uint8: "UINT8", torch.bool: "BOOL",
    }
    return table.get(dt, "FP32")


class TorchBackend(Backend):
    name = "pytorch"
    default_filename = "model.pt"

    def load(self, model_dir: str, version_dir: str, config) -> None:
        import torch

        files = sorted(f for f in os.listdir(version_dir) if f.endswith((".pt", ".pt2", ".pth")))
        path = self.model_file(version_dir, config, candidates=("model.pt2", *files))
        threads = config_parameter(config, "threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.exported = False
        try:
            if path.endswith(".pt2"):
                ep = torch.export.load(path)
                self.module = ep.module()
                self.exported = True
                specs = ep.graph_signature.user_inputs
                metas = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
                self.inputs = []
                for name in specs:
                    v = metas.get(name)
                    shape = [int(d) if isinstance(d, int) else -1 for d in v.shape] if v is not None else []
                    self.inputs.append(TensorSpec(name, _torch_dtype_to_v2(v.dtype) if v is not None else "FP32", shape))
                out_node = next(n for n in ep.graph.nodes if n.op == "output")
                outs = out_node.args[0]
                self.outputs = []
                for i, o in enumerate(outs if isinstance(outs, (list, tuple)) else [outs]):
                    v = getattr(o, "meta", {}).get("val")
                    shape = [int(d) if isinstance(d, int) else -1 for d in v.shape] if v is not None else []
                    self.outputs.append(TensorSpec(f"output__{i}", _torch_dtype_to_v2(v.dtype) if v is not None else "FP32", shape))
            else:
                self.module = torch.jit.load(path, map_location="cpu")
                self.module.eval()
                args = [a.name for a in self.module.forward.schema.arguments][1:]  # drop self
                self.inputs = [TensorSpec(a, "FP32", []) for a in args]
                self.outputs = []
        except Exception as e:
            raise ModelLoadError(f"torch could not load {path}: {e}") from e
        # The config, when present, names and types the tensors (TorchScript carries no types).
        if config is not None and len(config.input):
            from tuili.serve.spec import tensor_specs

            cin, cout = tensor_specs(config)
            if len(cin) != len(self.inputs) and self.inputs:
                raise ConfigError(
                    f"model config of {model_dir} lists {len(cin)} inputs but {path} takes {len(self.inputs)} "
                    f"({', '.join(s.name for s in self.inputs)})"
                )
            self.inputs = cin
            if len(cout):
                self.outputs = cout
        if not self.outputs:
            raise ConfigError(f"{path}: a TorchScript model needs its outputs listed in config.pbtxt (name, data_type, dims)")
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]
        self._path = path
        self._torch = torch

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
