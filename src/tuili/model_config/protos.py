"""Triton's generated protobuf modules, as tritonclient ships them.

``model_config_pb2`` is the schema of config.pbtxt (package ``inference``, Triton's field names and
numbers); ``service_pb2`` is the KServe V2 / Triton gRPC protocol, whose ``ModelConfigResponse``
carries that same ``ModelConfig``. Using tritonclient's modules instead of our own copies of the
.proto files means there is no build step and no second schema that could drift from Triton's.
"""
from __future__ import annotations

from tritonclient.grpc import model_config_pb2, service_pb2

__all__ = ["ModelConfig", "model_config_pb2", "service_pb2"]

#: The message a config.pbtxt is parsed into.
ModelConfig = model_config_pb2.ModelConfig
