"""A model's Ray Serve settings, read from its config.pbtxt: no Ray import here, so this is testable anywhere.

A model asks for its replicas and resources in one ``ray`` parameter holding a JSON object:

    parameters { key: "ray" value: { string_value: '{"min_replicas": 1, "max_replicas": 4, "num_cpus": 1}' } }

Without it a model gets one replica reserving one CPU per instance of its instance groups. The
``ray`` key is taken out of the config before a replica loads the model (the server refuses
parameters its backend does not read), so the replica serves exactly the rest of the config.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tuili.errors import ConfigError
from tuili.model_config import ModelConfig, config_to_json, load_model_config

RAY_PARAMETER = "ray"

# key -> (type, what it means); every key is optional
RAY_KEYS: dict[str, tuple[type, str]] = {
    "num_replicas": (int, "fixed number of replicas (default 1; ignored when max_replicas is set)"),
    "min_replicas": (int, "autoscaling: fewest replicas (default 1)"),
    "max_replicas": (int, "autoscaling: most replicas; setting it turns autoscaling on"),
    "target_ongoing_requests": (float, "autoscaling: requests in flight per replica to aim for (default 2)"),
    "upscale_delay_s": (float, "autoscaling: how long demand must stay high before adding replicas"),
    "downscale_delay_s": (float, "autoscaling: how long demand must stay low before removing replicas"),
    "max_ongoing_requests": (int, "requests one replica takes at once (default: enough for its batcher)"),
    "num_cpus": (float, "CPUs reserved per replica (default: its instance count)"),
    "memory": (int, "bytes of memory reserved per replica (default: none reserved)"),
}


@dataclass
class ModelDeployment:
    """What one model's Ray deployment needs: its Ray options and what its replicas load, in order
    (an ensemble's steps before the ensemble), each with the config to load it with (None: its
    config.pbtxt as it is)."""
    name: str
    options: dict
    load_order: list[tuple[str, str | None]] = field(default_factory=list)


def read_ray_block(config: ModelConfig, where: str) -> dict:
    """The checked ``ray`` parameter of ``config`` ({} without one); ConfigError naming a bad key or value."""
    if RAY_PARAMETER not in config.parameters:
        return {}
    text = config.parameters[RAY_PARAMETER].string_value
    try:
        block = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where}: parameter 'ray' must be a JSON object, as '{{\"max_replicas\": 4}}': {e}") from None
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: parameter 'ray' must be a JSON object, got {text!r}")
    for key, value in block.items():
        if key not in RAY_KEYS:
            raise ConfigError(f"{where}: parameter 'ray' has unknown key {key!r}; known keys: {', '.join(RAY_KEYS)}")
        kind = RAY_KEYS[key][0]
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
        if not ok or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: parameter 'ray' key {key!r} must be a non-negative "
                              f"{'number' if kind is float else 'integer'}, got {value!r}")
    lo, hi = block.get("min_replicas", 1), block.get("max_replicas")
    if hi is not None and (hi < 1 or hi < lo):
        raise ConfigError(f"{where}: parameter 'ray': max_replicas ({hi}) must be at least 1 and at least min_replicas ({lo})")
    return block


def instance_count(config: ModelConfig) -> int:
    """How many instances one replica runs (Triton's default: one per instance group without a count)."""
    return sum(max(1, g.count) for g in config.instance_group) or 1


def ray_options(config: ModelConfig, block: dict) -> dict:
    """The Ray Serve deployment options of a model with ``config`` and ``ray`` block."""
    instances = instance_count(config)
    batch = max(1, config.max_batch_size)
    resources: dict = {"num_cpus": block.get("num_cpus", instances)}
    if "memory" in block:
        resources["memory"] = block["memory"]
    options = {
        "ray_actor_options": resources,
        # enough requests in flight for the dynamic batcher to form full batches on every instance
        "max_ongoing_requests": block.get("max_ongoing_requests", max(8, 2 * instances * batch)),
    }
    if "max_replicas" in block:
        autoscaling = {"min_replicas": block.get("min_replicas", 1), "max_replicas": block["max_replicas"],
                       "target_ongoing_requests": block.get("target_ongoing_requests", 2)}
        for key in ("upscale_delay_s", "downscale_delay_s"):
            if key in block:
                autoscaling[key] = block[key]
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = block.get("num_replicas", 1)
    return options


def _config_to_load(config: ModelConfig, has_block: bool) -> str | None:
    """The config a replica loads the model with: config.pbtxt as it is, or without its ``ray`` key."""
    if not has_block:
        return None
    stripped = ModelConfig()
    stripped.CopyFrom(config)
    del stripped.parameters[RAY_PARAMETER]
    return json.dumps(config_to_json(stripped))


def plan_deployment(repository: str, name: str) -> ModelDeployment:
    """The deployment of model ``name`` of ``repository`` (an ensemble's replicas also load its steps)."""
    model_dir = os.path.join(repository, name)
    config = load_model_config(model_dir)
    where = os.path.join(model_dir, "config.pbtxt")
    block = read_ray_block(config, where)
    order: list[tuple[str, str | None]] = []
    _add_with_steps(repository, name, config, RAY_PARAMETER in config.parameters, order, set())
    return ModelDeployment(name, ray_options(config, block), order)


def _add_with_steps(repository: str, name: str, config: ModelConfig, has_block: bool,
                    order: list[tuple[str, str | None]], seen: set[str]) -> None:
    if name in seen:
        return
    seen.add(name)
    for step in config.ensemble_scheduling.step:
        step_config = load_model_config(os.path.join(repository, step.model_name))
        _add_with_steps(repository, step.model_name, step_config, RAY_PARAMETER in step_config.parameters, order, seen)
    order.append((name, _config_to_load(config, has_block)))
