"""Triton's model configuration: the schema of a model's config.pbtxt and what tuili does with it.

    protos.py        Triton's generated ModelConfig (and gRPC service) modules, from tritonclient
    parse.py         config.pbtxt text or Triton's JSON form -> ModelConfig; errors name file:line:column
    locate.py        ModelConfigError, and the field path <-> line:column map behind it
    validate.py      Triton's rules (dims, reshape, batching, priorities, version policy, ensembles)
    autocomplete.py  fill a partial config from what the backend reports about the model
    render.py        Triton's JSON form and the text form
    spec.py          TensorSpec (one input/output) and ModelSpec (a configured model's tensors)

Used by backends (the tensors a model takes) and serve (what requests are checked against); it
imports neither.
"""
from tuili.model_config.autocomplete import DEFAULT_MAX_BATCH_SIZE, autocomplete
from tuili.model_config.locate import ModelConfigError
from tuili.model_config.parse import (
    CONFIG_FILENAME,
    load_model_config,
    parse_model_config,
    parse_model_config_json,
)
from tuili.model_config.protos import ModelConfig
from tuili.model_config.render import config_to_json, config_to_pbtxt
from tuili.model_config.spec import ModelSpec, TensorSpec
from tuili.model_config.validate import ENSEMBLE_PLATFORM, validate_model_config

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_MAX_BATCH_SIZE",
    "ENSEMBLE_PLATFORM",
    "ModelConfig",
    "ModelConfigError",
    "ModelSpec",
    "TensorSpec",
    "autocomplete",
    "config_to_json",
    "config_to_pbtxt",
    "load_model_config",
    "parse_model_config",
    "parse_model_config_json",
    "validate_model_config",
]
