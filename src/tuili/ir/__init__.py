"""tuili's intermediate representation: Graph / Node / Value / Tensor, ONNX I/O, shape inference.

``ir`` imports nothing from the rest of tuili."""
from tuili.ir.core import Graph, Node, Tensor, Value
from tuili.ir.serde import from_model_proto, load, save, to_model_proto
from tuili.ir.shape_inference import infer_shapes

__all__ = ["Graph", "Node", "Tensor", "Value", "from_model_proto", "infer_shapes", "load", "save", "to_model_proto"]
