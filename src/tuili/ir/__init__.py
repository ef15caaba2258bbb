"""tuili's intermediate representation: Graph / Node / Value / Tensor, ONNX I/O, shape inference,
function bodies.

``ir`` imports nothing from the rest of tuili but errors and dtypes."""
from tuili.ir.core import Graph, Node, Tensor, Value
from tuili.ir.functions import OpFunction, op_function
from tuili.ir.serde import from_model_proto, load, save, to_model_proto
from tuili.ir.shape_inference import infer_shapes

__all__ = ["Graph", "Node", "OpFunction", "Tensor", "Value", "from_model_proto", "infer_shapes", "load",
           "op_function", "save", "to_model_proto"]
