"""Shared fixtures: each zoo model is built and exported at most once per test session."""
from __future__ import annotations

import numpy as np
import pytest


class ExportCache:
    def __init__(self, root):
        self.root = root
        self._done: dict[str, tuple] = {}

    def get(self, name: str):
        """(onnx path, torch model) for zoo model ``name`` at its defaults, exported once."""
        if name not in self._done:
            from tuili.zoo import create, export

            model = create(name)
            path = export(name, self.root / f"{name}.onnx", model=model)
            self._done[name] = (path, model)
        return self._done[name]


@pytest.fixture(scope="session")
def zoo_exports(tmp_path_factory):
    return ExportCache(tmp_path_factory.mktemp("zoo_exports"))


def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def torch_outputs(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        out = model(*[torch.from_numpy(v) for v in feeds.values()])
    out = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in out]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch's OpenMP threads contend badly on the shared 2-core test machine (10x slower steps);
    one intra-op thread per test, restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
