"""Model configuration: config.pbtxt parsing, located errors, validation, auto-complete, JSON form."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from google.protobuf import json_format

from tuili import model_config as C
from tuili.errors import ConfigError
from tuili.model_config import TensorSpec
from tuili.model_config.protos import model_config_pb2 as mc

RESNET = """\
# a typical Triton config, as found in the wild
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "data"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output [
  {
    name: "prob"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
instance_group [ { count: 2, kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 5000 allow_timeout_override: true max_queue_size: 10 }
  priority_queue_policy { key: 2 value { timeout_action: DELAY max_queue_size: 4 } }
}
version_policy: { latest: { num_versions: 2 } }
parameters { key: "intra_op_thread_count" value { string_value: "2" } }
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "data" value { data_type: TYPE_FP32 dims: [3, 224, 224] zero_data: true } } } ]
"""

ENSEMBLE = """\
name: "pipeline"
platform: "ensemble"
max_batch_size: 4
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "LABEL" data_type: TYPE_STRING dims: [ 3 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map { key: "raw" value: "IMAGE" }
      output_map { key: "pixels" value: "pix" }
    },
    {
      model_name: "classifier"
      model_version: -1
      input_map { key: "input" value: "pix" }
      output_map { key: "probs" value: "LABEL" }
    }
  ]
}
"""


def write_model(tmp_path, name: str, text: str | None, files: dict[str, str] | None = None):
    d = tmp_path / name
    d.mkdir()
    if text is not None:
        (d / "config.pbtxt").write_text(textwrap.dedent(text))
    for fname, content in (files or {}).items():
        (d / fname).write_text(content)
    return d


# --------------------------------------------------------------------------- good configs
def test_typical_triton_config_parses_every_section(tmp_path):
    d = write_model(tmp_path, "resnet", RESNET, {"labels.txt": "cat\ndog\n"})
    cfg = C.load_model_config(d)
    assert cfg.name == "resnet" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert [i.name for i in cfg.input] == ["data"]
    assert list(cfg.input[0].dims) == [3, 224, 224]
    assert cfg.input[0].data_type == mc.TYPE_FP32
    assert cfg.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.instance_group[0].count == 2 and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    db = cfg.dynamic_batching
    assert list(db.preferred_batch_size) == [4, 8] and db.max_queue_delay_microseconds == 100
    assert db.preserve_ordering and db.priority_levels == 2 and db.default_priority_level == 1
    q = db.default_queue_policy
    assert (q.timeout_action, q.default_timeout_microseconds, q.allow_timeout_override, q.max_queue_size) == (
        mc.ModelQueuePolicy.REJECT, 5000, True, 10)
    assert db.priority_queue_policy[2].timeout_action == mc.ModelQueuePolicy.DELAY
    assert cfg.version_policy.WhichOneof("policy_choice") == "latest"
    assert cfg.version_policy.latest.num_versions == 2
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    assert cfg.model_warmup[0].inputs["data"].zero_data


def test_version_policies_reshape_optional_and_sequence(tmp_path):
    text = """
    name: "m"
    backend: "onnxruntime"
    max_batch_size: 0
    version_policy { specific { versions: [1, 3] } }
    input [ { name: "x" data_type: TYPE_INT64 dims: [ -1 ] optional: true },
            { name: "s" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]
    output { name: "y" data_type: TYPE_FP16 dims: [ 2, 2 ] reshape { shape: [ 4 ] } }
    sequence_batching { max_sequence_idle_microseconds: 5000000 }
    """
    cfg = C.load_model_config(write_model(tmp_path, "m", text))
    assert list(cfg.version_policy.specific.versions) == [1, 3]
    assert cfg.input[0].optional and cfg.input[1].HasField("reshape") and list(cfg.input[1].reshape.shape) == []
    assert list(cfg.output[0].reshape.shape) == [4]
    assert cfg.WhichOneof("scheduling_choice") == "sequence_batching"
    cfg_all = C.parse_model_config('name: "m" version_policy { all { } }')
    assert cfg_all.version_policy.WhichOneof("policy_choice") == "all"


def test_ensemble_parses(tmp_path):
    cfg = C.load_model_config(write_model(tmp_path, "pipeline", ENSEMBLE))
    steps = cfg.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["preprocess", "classifier"]
    assert dict(steps[0].input_map) == {"raw": "IMAGE"} and steps[1].model_version == -1


def test_missing_config_gives_named_skeleton_and_missing_name_is_filled(tmp_path):
    d = write_model(tmp_path, "bare", None)
    assert C.load_model_config(d) == mc.ModelConfig(name="bare")
    d2 = write_model(tmp_path, "noname", "max_batch_size: 2\n")
    assert C.load_model_config(d2).name == "noname"


def test_the_schema_is_tritons_own():
    """The ModelConfig class is the one tritonclient generates from Triton's model_config.proto, and
    the gRPC ModelConfig reply carries that same message: there is no second copy of the schema."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    assert C.ModelConfig is model_config_pb2.ModelConfig
    assert service_pb2.ModelConfigResponse.DESCRIPTOR.fields_by_name["config"].message_type is C.ModelConfig.DESCRIPTOR
    cfg = C.parse_model_config(RESNET, validate=False)
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 10


# --------------------------------------------------------------------------- located errors
@pytest.mark.parametrize(
    "text, field, line, words",
    [
        ('name: "m"\nmax_batch_sise: 4\n', "max_batch_sise", 2, ["no field named"]),
        ('name: "m"\ninput [\n  { name: "x"\n    data_type: TYPE_FLOAT32 dims: [1] } ]\n', "input[0].data_type", 4,
         ["TYPE_FLOAT32", "valid values", "TYPE_FP32"]),
        ('name: "m"\ninstance_group [ { count: 1 kind: KIND_TPU } ]\n', "instance_group[0].kind", 2,
         ["KIND_TPU", "KIND_CPU"]),
        ('name: "m"\ninput { name: "x" data_type: TYPE_FP32 dims: [ 1, 2 }\n', "input[0].dims", 2, []),
        ('name: "m"\nmax_batch_size: "eight"\n', "max_batch_size", 2, ["integer"]),
        ('name: "m"\noutput [ { name: "a" }, { name: "b" bogus: 1 } ]\n', "output[1].bogus", 2, ["bogus"]),
        ('name: "m"\nversion_policy { latest { num_versions: 1 } all { } }\n', "version_policy.all", 2, ["oneof"]),
        ('name: "m"\ninput { name: "x"\n', None, None, []),  # unterminated block: at least file and line
    ],
)
def test_syntax_errors_name_file_line_and_field(tmp_path, text, field, line, words):
    d = write_model(tmp_path, "m", text)
    with pytest.raises(C.ModelConfigError) as ei:
        C.load_model_config(d)
    e = ei.value
    assert isinstance(e, ConfigError)
    msg = str(e)
    assert str(d / "config.pbtxt") in msg
    assert e.line is not None and f":{e.line}" in msg
    if line is not None:
        assert e.line == line
    if field is not None:
        assert e.field == field and f"'{field}'" in msg
    for w in words:
        assert w in msg
    assert "inference." not in msg  # protobuf package names are not shown


@pytest.mark.parametrize(
    "body, field, line",
    [
        ("max_batch_size: -2\n", "max_batch_size", 2),
        ("input [ { name: \"x\" data_type: TYPE_FP32 } ]\n", "input[0].dims", 2),
        ("input [ { name: \"x\" dims: [ 2 ] } ]\n", "input[0].data_type", 2),
        ("input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 2, 0 ] } ]\n", "input[0].dims", 2),
        ("input [ { name: \"x\" data_type: TYPE_FP32 dims: [ 2 ] },\n"
         "        { name: \"x\" data_type: TYPE_FP32 dims: [ 2 ] } ]\n", "input[1].name", 3),
        ("output [ { name: \"y\" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 3 ] } } ]\n",
         "output[0].reshape", 2),
        ("output [ { name: \"y\" data_type: TYPE_FP32 dims: [ 4 ] label_filename: \"nope.txt\" } ]\n",
         "output[0].label_filename", 2),
        ("max_batch_size: 4\ndynamic_batching {\n  preferred_batch_size: [ 2, 16 ]\n}\n",
         "dynamic_batching.preferred_batch_size", 4),
        ("max_batch_size: 4\ndynamic_batching { priority_levels: 2 default_priority_level: 3 }\n",
         "dynamic_batching.default_priority_level", 3),
        ("version_policy { latest { num_versions: 0 } }\n", "version_policy.latest.num_versions", 2),
        ("version_policy { specific { } }\n", "version_policy.specific.versions", 2),
        ("instance_group [ { count: -1 } ]\n", "instance_group[0].count", 2),
    ],
)
def test_semantic_errors_name_the_field_and_its_line(tmp_path, body, field, line):
    d = write_model(tmp_path, "m", 'name: "m"\n' + body)
    with pytest.raises(C.ModelConfigError) as ei:
        C.load_model_config(d)
    e = ei.value
    assert e.field == field, str(e)
    assert e.line == line, str(e)
    assert e.file == str(d / "config.pbtxt")
    assert f"config.pbtxt:{line}:" in str(e) and f"'{field}'" in str(e)


def test_name_must_match_directory(tmp_path):
    d = write_model(tmp_path, "mobilenet", 'name: "resnet"\n')
    with pytest.raises(C.ModelConfigError) as ei:
        C.load_model_config(d)
    assert ei.value.field == "name" and ei.value.line == 1
    assert "resnet" in str(ei.value) and "mobilenet" in str(ei.value)


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda t: t.replace('value: "pix" }\n    },', 'value: "pixels_typo" }\n    },'),
         "ensemble_scheduling.step[1].input_map", ["pix"]),
        (lambda t: t.replace('value: "LABEL"', 'value: "OTHER"'), "output", ["LABEL"]),
        (lambda t: t.replace('platform: "ensemble"', 'platform: "onnxruntime_onnx"'), "platform", ["ensemble"]),
        (lambda t: t.replace('output_map { key: "pixels" value: "pix" }',
                             'output_map { key: "pixels" value: "IMAGE" }'),
         "ensemble_scheduling.step[0].output_map", ["IMAGE"]),
        (lambda t: t.replace('model_name: "preprocess"', 'model_name: ""'),
         "ensemble_scheduling.step[0].model_name", []),
    ],
)
def test_ensemble_steps_must_reference_declared_tensors(tmp_path, mutate, field, words):
    d = write_model(tmp_path, "pipeline", mutate(ENSEMBLE))
    with pytest.raises(C.ModelConfigError) as ei:
        C.load_model_config(d)
    assert ei.value.field == field, str(ei.value)
    assert ei.value.line is not None
    for w in words:
        assert w in str(ei.value)


def test_ensemble_cycle_is_rejected():
    text = ENSEMBLE.replace('input_map { key: "raw" value: "IMAGE" }',
                            'input_map { key: "raw" value: "LABEL" }')
    # LABEL is produced by step 1 which needs pix from step 0 which needs LABEL
    with pytest.raises(C.ModelConfigError, match="cycle"):
        C.parse_model_config(text)


# --------------------------------------------------------------------------- JSON
def test_config_to_json_is_tritons_form_and_round_trips(tmp_path):
    d = write_model(tmp_path, "resnet", RESNET, {"labels.txt": "cat\n"})
    cfg = C.load_model_config(d)
    js = C.config_to_json(cfg)
    json.dumps(js)  # plain JSON
    assert js["name"] == "resnet" and js["max_batch_size"] == 8
    assert js["input"][0]["data_type"] == "TYPE_FP32"
    assert js["input"][0]["dims"] == [3, 224, 224]  # numbers, not protobuf's int64 strings
    assert js["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert js["dynamic_batching"]["priority_queue_policy"]["2"]["max_queue_size"] == 4
    assert js["input"][0]["optional"] is False  # defaults are present, as in Triton
    assert js["model_warmup"][0]["inputs"]["data"]["dims"] == [3, 224, 224]
    assert C.parse_model_config_json(json.dumps(js)) == cfg
    assert C.parse_model_config_json(js) == cfg


def test_json_config_errors_are_config_errors():
    with pytest.raises(C.ModelConfigError, match="max_batch_sise"):
        C.parse_model_config_json('{"name": "m", "max_batch_sise": 3}')
    with pytest.raises(C.ModelConfigError):
        C.parse_model_config_json('{"name": "m", ')
    with pytest.raises(C.ModelConfigError) as ei:
        C.parse_model_config_json('{"name": "m", "max_batch_size": -1}')
    assert ei.value.field == "max_batch_size"


# --------------------------------------------------------------------------- auto-complete
def spec(name, datatype, shape):
    return TensorSpec(name, datatype, shape)


def test_autocomplete_fills_everything_for_a_batchable_model():
    cfg = C.autocomplete(mc.ModelConfig(name="m"),
                         [spec("x", "FP32", [-1, 3, 8, 8])], [spec("y", "INT64", [-1, 10])])
    assert cfg.max_batch_size == C.DEFAULT_MAX_BATCH_SIZE
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("x", mc.TYPE_FP32, [3, 8, 8])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("y", mc.TYPE_INT64, [10])]
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_autocomplete_without_batching():
    # fixed first dimension: cannot batch; dims are the full shape
    cfg = C.autocomplete(mc.ModelConfig(name="m"), [spec("x", "FP32", [1, 4])], [spec("y", "FP32", [1, 2])])
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 4]
    assert cfg.WhichOneof("scheduling_choice") is None
    # backend cannot batch even though the first dim is dynamic
    cfg = C.autocomplete(mc.ModelConfig(name="m"), [spec("x", "FP32", [-1, 4])], [spec("y", "FP32", [-1])],
                         supports_batching=False)
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [-1, 4]


def test_autocomplete_respects_what_the_config_says():
    base = C.parse_model_config(
        'name: "m" max_batch_size: 16 dynamic_batching { max_queue_delay_microseconds: 7 }\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, -1 ] } ]\n', validate=False)
    cfg = C.autocomplete(base, [spec("x", "FP32", [-1, 3, None]), spec("z", np.dtype(np.int32), ["batch", 2])],
                         [spec("y", "tensor(float)", [-1, 5])])
    assert cfg.max_batch_size == 16 and cfg.dynamic_batching.max_queue_delay_microseconds == 7
    assert [t.name for t in cfg.input] == ["x", "z"]
    assert list(cfg.input[0].dims) == [3, -1] and list(cfg.input[1].dims) == [2]
    assert cfg.input[1].data_type == mc.TYPE_INT32 and cfg.output[0].data_type == mc.TYPE_FP32
    assert base.input[0].name == "x" and len(base.input) == 1  # the argument is not modified
    # an explicit max_batch_size: 0 with full dims is kept unbatched
    nb = C.parse_model_config('name: "m" input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]')
    cfg = C.autocomplete(nb, [spec("x", "FP32", [-1, 3])], [spec("y", "FP32", [-1])])
    assert cfg.max_batch_size == 0


def test_autocomplete_scalar_per_item_and_bytes():
    cfg = C.autocomplete(mc.ModelConfig(name="m"), [spec("s", "BYTES", [-1])], [spec("y", "FP32", [-1, 2])])
    assert cfg.max_batch_size == C.DEFAULT_MAX_BATCH_SIZE
    t = cfg.input[0]
    assert t.data_type == mc.TYPE_STRING and list(t.dims) == [1] and t.HasField("reshape")
    assert list(t.reshape.shape) == []


def test_autocomplete_reports_mismatches_with_the_model(tmp_path):
    wrong_type = C.parse_model_config('name: "m" input [ { name: "x" data_type: TYPE_INT8 dims: [ 2 ] } ]')
    with pytest.raises(C.ModelConfigError) as ei:
        C.autocomplete(wrong_type, [spec("x", "FP32", [2])], [spec("y", "FP32", [2])])
    assert ei.value.field == "input[0].data_type" and "TYPE_INT8" in str(ei.value) and "TYPE_FP32" in str(ei.value)
    unknown = C.parse_model_config('name: "m" output [ { name: "nope" data_type: TYPE_FP32 dims: [ 2 ] } ]')
    with pytest.raises(C.ModelConfigError) as ei:
        C.autocomplete(unknown, [spec("x", "FP32", [2])], [spec("y", "FP32", [2])])
    assert ei.value.field == "output[0].name" and "'y'" in str(ei.value)
    with pytest.raises(C.ModelConfigError) as ei:
        C.autocomplete(mc.ModelConfig(name="m"), [], [])
    assert ei.value.field == "input"


def test_pbtxt_round_trip(tmp_path):
    cfg = C.parse_model_config(ENSEMBLE)
    assert C.parse_model_config(C.config_to_pbtxt(cfg)) == cfg
    assert json_format.MessageToDict(cfg)["ensembleScheduling"]["step"][0]["modelName"] == "preprocess"
