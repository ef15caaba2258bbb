"""Render a model configuration: Triton's JSON form (what ``GET /v2/models/{model}/config`` returns
and a python-backend model receives) and the text form a config.pbtxt holds."""
from __future__ import annotations

from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tuili.model_config.protos import ModelConfig

_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _fix_int64(value: Any, desc: Descriptor) -> Any:
    """protobuf's JSON writes 64-bit integers as strings; Triton's JSON has numbers."""
    if not isinstance(value, dict):
        return value
    for key, v in value.items():
        fd = desc.fields_by_name.get(key)
        if fd is None:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            for mk, mv in v.items():
                if vfd.message_type is not None:
                    _fix_int64(mv, vfd.message_type)
                elif vfd.type in _INT64_TYPES:
                    v[mk] = int(mv)
        elif fd.message_type is not None:
            for item in (v if fd.is_repeated else [v]):
                _fix_int64(item, fd.message_type)
        elif fd.type in _INT64_TYPES:
            value[key] = [int(x) for x in v] if fd.is_repeated else int(v)
    return value


def config_to_json(config: ModelConfig) -> dict:
    """Triton's JSON form of a config: proto field names, enum names, every field
    present (defaults included), 64-bit integers as JSON numbers."""
    d = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)
    return _fix_int64(d, config.DESCRIPTOR)


def config_to_pbtxt(config: ModelConfig) -> str:
    """Text-format form (what a config.pbtxt holds)."""
    return text_format.MessageToString(config)
