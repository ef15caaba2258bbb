"""Shape and dtype rules, one module per op family; importing this package registers them all."""
from __future__ import annotations

from . import elementwise, misc, ml, ms, nn, quant, reduce, tensor  # noqa: F401  (registration side effects)
from .registry import (
    InferContext,
    OptionalType,
    SequenceType,
    TensorType,
    broadcast_shapes,
    get_rule,
    registered_ops,
    shape_rule,
)

__all__ = ["InferContext", "OptionalType", "SequenceType", "TensorType", "broadcast_shapes", "get_rule",
           "registered_ops", "shape_rule"]
