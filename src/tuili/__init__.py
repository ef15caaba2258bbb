"""tuili (推理): an inference system — ONNX engine, model compression, Triton-compatible serving."""
from tuili.errors import TuiliError
from tuili.ir import Graph, load

__version__ = "0.1.0"
__all__ = ["Graph", "InferenceSession", "TuiliError", "load", "__version__"]


def __getattr__(name: str):
    # The runtime pulls in every kernel: import it only when asked for.
    if name == "InferenceSession":
        from tuili.runtime.session import InferenceSession

        return InferenceSession
    raise AttributeError(f"module 'tuili' has no attribute {name!r}")
