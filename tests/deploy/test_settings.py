"""A model's Ray settings from its config (tuili.deploy.settings: no Ray needed)."""
from __future__ import annotations

import json

import pytest

from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.deploy.settings import plan_deployment
from tuili.errors import ConfigError
from tuili.model_config import parse_model_config_json


def _model(root, name: str, extra: str = "", instances: int = 1) -> None:
    _save(add_sub_model(), f"{root}/{name}/1/model.onnx")
    _write(f"{root}/{name}/config.pbtxt", f"""
        name: "{name}"
        backend: "onnxruntime"
        max_batch_size: 4
        instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
        {extra}
    """)


def _ray(block: dict) -> str:
    return f"parameters {{ key: \"ray\" value: {{ string_value: '{json.dumps(block)}' }} }}"


def test_defaults_one_replica_one_cpu_per_instance(tmp_path):
    _model(tmp_path, "m", instances=2)
    d = plan_deployment(str(tmp_path), "m")
    assert d.options == {"ray_actor_options": {"num_cpus": 2}, "max_ongoing_requests": 16, "num_replicas": 1}
    assert d.load_order == [("m", None)]  # config.pbtxt as it is


def test_autoscaling_block_and_the_config_the_replica_loads(tmp_path):
    _model(tmp_path, "m", _ray({"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4,
                                "downscale_delay_s": 5, "num_cpus": 0.5, "memory": 2**30}))
    d = plan_deployment(str(tmp_path), "m")
    assert d.options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4,
                                               "downscale_delay_s": 5}
    assert "num_replicas" not in d.options
    assert d.options["ray_actor_options"] == {"num_cpus": 0.5, "memory": 2**30}
    ((name, config_json),) = d.load_order
    config = parse_model_config_json(config_json, model_dir=str(tmp_path / "m"))
    assert name == "m" and "ray" not in config.parameters and config.max_batch_size == 4


@pytest.mark.parametrize("block, words", [
    ({"max_replica": 2}, "unknown key 'max_replica'"),
    ({"num_replicas": "2"}, "'num_replicas' must be a non-negative integer"),
    ({"num_cpus": -1}, "'num_cpus' must be a non-negative number"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas (2) must be at least 1 and at least min_replicas (3)"),
])
def test_bad_blocks_are_refused_by_name(tmp_path, block, words):
    _model(tmp_path, "m", _ray(block))
    with pytest.raises(ConfigError) as e:
        plan_deployment(str(tmp_path), "m")
    assert words in str(e.value) and "config.pbtxt" in str(e.value)


def test_ensemble_replicas_load_its_steps_first(tmp_path):
    _model(tmp_path, "step", _ray({"num_replicas": 3}))
    _write(f"{tmp_path}/ens/config.pbtxt", """
        name: "ens"
        platform: "ensemble"
        max_batch_size: 4
        input [ { name: "A" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "S" data_type: TYPE_FP32 dims: [ 16 ] } ]
        ensemble_scheduling { step [ { model_name: "step" model_version: -1
            input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
            output_map { key: "OUTPUT0" value: "S" } } ] }
    """)
    d = plan_deployment(str(tmp_path), "ens")
    assert [n for n, _ in d.load_order] == ["step", "ens"]
    assert d.load_order[0][1] is not None and d.load_order[1][1] is None  # the step's ray key taken out
    assert d.options["num_replicas"] == 1


def test_replica_memory_is_measured_in_a_fresh_process(tmp_path):
    from tuili.deploy.footprint import HEADROOM, replica_memory

    _model(tmp_path, "m", _ray({"num_cpus": 1}))
    d = plan_deployment(str(tmp_path), "m")
    reserved = replica_memory(str(tmp_path), d.load_order)
    # a Python process with numpy, onnxruntime and the serving core loaded: tens of MB at least, not GBs
    assert 30 * 2**20 * HEADROOM < reserved < 4 * 2**30
