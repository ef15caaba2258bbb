"""No silently ignored config: every field of Triton's ModelConfig is decided (implemented, warned
or refused); a config setting a refused field fails to load naming it, a warned one loads with the
warning in the model's reason; every repository in the tree still loads."""
from __future__ import annotations

import json
import os

import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import ROOT, copy_repo
from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.backends.base import backend_class, resolve_backend_name
from tuili.model_config import ModelConfig, ModelConfigError, config_to_pbtxt, load_model_config, parse_model_config
from tuili.model_config.protos import model_config_pb2 as mc
from tuili.model_config.support import IMPLEMENTED, REFUSED, SERVER_PARAMETERS, VALUES, WARNED, check_supported
from tuili.serve.repository import ModelRepository

MODEL = """
name: "m"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""
ENSEMBLE = """
name: "e"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "S" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling { step [ { model_name: "m" model_version: -1 input_map { key: "INPUT0" value: "A" }
                               input_map { key: "INPUT1" value: "A" } output_map { key: "OUTPUT0" value: "S" } } ] }
"""


def _all_paths(desc, prefix="", seen=()) -> list[str]:
    """Every field path of a message descriptor, as support.py writes them."""
    out = []
    for fd in desc.fields:
        path = prefix + fd.name
        out.append(path)
        sub = fd.message_type
        if sub is None or sub.full_name in seen:
            continue
        if sub.GetOptions().map_entry:
            value = sub.fields_by_name["value"].message_type
            if value is not None:
                out += _all_paths(value, f"{path}{{}}.", (*seen, sub.full_name))
        else:
            out += _all_paths(sub, f"{path}[]." if fd.is_repeated else f"{path}.", (*seen, sub.full_name))
    return out


def _decided(path: str) -> bool:
    """In the table, or below a refused or warned field (which is never walked into)."""
    parts = path.split(".")
    ancestors = {".".join(parts[:i]).removesuffix("[]").removesuffix("{}") for i in range(1, len(parts))}
    return path in IMPLEMENTED | set(WARNED) | set(REFUSED) or any(a in REFUSED or a in WARNED for a in ancestors)


def test_every_field_of_model_config_is_decided():
    undecided = [p for p in _all_paths(ModelConfig.DESCRIPTOR) if not _decided(p)]
    assert not undecided, f"fields of model_config.proto with no decision in tuili.model_config.support: {undecided}"
    # the table names only real fields
    real = set(_all_paths(ModelConfig.DESCRIPTOR))
    assert not (IMPLEMENTED | set(WARNED) | set(REFUSED) | set(VALUES)) - real


def _set(config, pattern: str, enum_value: int | None = None) -> str:
    """Set the field ``pattern`` (``instance_group[].gpus``) on ``config`` to a non-default value (an
    existing list element is reused) and return its path as errors name it (``instance_group[0].gpus``)."""
    msg, path = config, ""
    parts = pattern.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        name = part.removesuffix("[]").removesuffix("{}")
        fd = msg.DESCRIPTOR.fields_by_name[name]
        path += name
        value = getattr(msg, name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is None:
                value["k"] = "v"
                return path
            msg, path = value["k"], f'{path}["k"].'
        elif fd.is_repeated and fd.message_type is not None:
            msg = value[0] if len(value) else value.add()
            if last:  # a list is refused as a whole
                return path
            path += "[0]."
        elif fd.message_type is not None:
            if last:
                value.SetInParent()
                return path
            msg, path = value, path + "."
        elif fd.is_repeated:
            value.append("x" if fd.type == FieldDescriptor.TYPE_STRING else 1)
            return path
        else:
            setattr(msg, name, {FieldDescriptor.TYPE_STRING: "x", FieldDescriptor.TYPE_BOOL: True,
                                FieldDescriptor.TYPE_ENUM: enum_value or 1}.get(fd.type, 1))
            return path
    return path


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("unsupported")
    _save(add_sub_model(), str(root / "m" / "1" / "model.onnx"))
    os.makedirs(root / "e" / "1")
    return root


def _plan(repo_dir, name: str, config: ModelConfig):
    _write(str(repo_dir / name / "config.pbtxt"), config_to_pbtxt(config))
    repo = ModelRepository([str(repo_dir)])
    repo.scan()
    return repo.plan(name)


REFUSALS = [(p, None) for p in REFUSED] + [
    ("instance_group[].kind", mc.ModelInstanceGroup.KIND_GPU),
    ("instance_group[].kind", mc.ModelInstanceGroup.KIND_MODEL),
]


@pytest.mark.parametrize("pattern,enum_value", REFUSALS, ids=[f"{p}={v}" if v else p for p, v in REFUSALS])
def test_a_refused_field_fails_the_load_naming_it(repo_dir, pattern, enum_value):
    name = "e" if pattern.startswith("ensemble_scheduling") else "m"
    config = parse_model_config(ENSEMBLE if name == "e" else MODEL, validate=False)
    field = _set(config, pattern, enum_value)
    with pytest.raises(ModelConfigError) as e:
        _plan(repo_dir, name, config)
    assert e.value.field == field, str(e.value)
    assert f"field '{field}'" in str(e.value) and "not implemented by tuili" in str(e.value)
    assert e.value.line is not None  # located in config.pbtxt


@pytest.mark.parametrize("pattern", sorted(WARNED))
def test_a_warned_field_loads_with_a_warning(repo_dir, pattern):
    config = parse_model_config(MODEL, validate=False)
    field = _set(config, pattern)
    plan = _plan(repo_dir, "m", config)
    assert len(plan.warnings) == 1 and plan.warnings[0].startswith(f"{field} is not implemented and has no effect")


def test_parameters_a_backend_does_not_read_are_refused(repo_dir):
    config = parse_model_config(MODEL, validate=False)
    for key in ("intra_op_thread_count", *SERVER_PARAMETERS):
        config.parameters[key].string_value = "1"
    assert _plan(repo_dir, "m", config).warnings == []
    config.parameters["enable_mem_arena"].string_value = "1"  # Triton's onnxruntime backend reads it; tuili does not
    with pytest.raises(ModelConfigError, match=r"parameters\[\"enable_mem_arena\"\].*intra_op_thread_count"):
        _plan(repo_dir, "m", config)
    # python models read their own parameters; an ensemble reads none
    assert backend_class("python").parameter_keys is None
    assert check_supported(parse_model_config('name: "p" parameters { key: "labels_file" value { string_value: "l" } }'),
                           None) == []
    ens = parse_model_config(ENSEMBLE, validate=False)
    ens.parameters["x"].string_value = "1"
    with pytest.raises(ModelConfigError, match=r"parameters\[\"x\"\]"):
        _plan(repo_dir, "e", ens)


def test_explicit_defaults_are_fine():
    config = parse_model_config(MODEL + "model_transaction_policy { decoupled: false }\nresponse_cache { enable: false }\n"
                                        "instance_group [ { kind: KIND_AUTO } ]\n", validate=False)
    assert check_supported(config, frozenset()) == []


def _repository_configs():
    for root in (os.path.join(ROOT, "examples", "model_repository"),):
        for name in sorted(os.listdir(root)):
            if os.path.exists(os.path.join(root, name, "config.pbtxt")):
                yield os.path.join(root, name)


@pytest.mark.parametrize("model_dir", list(_repository_configs()), ids=os.path.basename)
def test_every_example_config_is_supported(model_dir):
    config = load_model_config(model_dir, validate=False)
    is_ensemble = config.platform == "ensemble"
    keys = frozenset() if is_ensemble else backend_class(resolve_backend_name(config.backend, config.platform)).parameter_keys
    assert check_supported(config, keys) == []


def test_every_test_repository_model_plans(test_repo):
    repo = ModelRepository([test_repo[0]])
    for name in repo.scan():
        assert repo.plan(name).warnings == [], name


# ------------------------------------------------------------------ real servers, HTTP and gRPC
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_refuses_unimplemented_config_and_reports_warnings(test_repo, server_factory, tmp_path, protocol):
    repo = copy_repo(test_repo[0], str(tmp_path / "repo"), ["add_sub"])
    srv = server_factory(repo, "--model-control-mode", "explicit", "--load-model", "add_sub")
    c = th.InferenceServerClient(srv.http) if protocol == "http" else tg.InferenceServerClient(srv.grpc)
    base = {"name": "add_sub", "backend": "onnxruntime", "max_batch_size": 8}
    try:
        for extra, field in [({"sequence_batching": {"iterative_sequence": True}}, "sequence_batching.iterative_sequence"),
                             ({"model_transaction_policy": {"decoupled": True}}, "model_transaction_policy.decoupled"),
                             ({"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}},
                              "optimization.execution_accelerators")]:
            with pytest.raises(InferenceServerException) as e:
                c.load_model("add_sub", config=json.dumps({**base, **extra}))
            assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
            assert f"field '{field}'" in e.value.message() and "not implemented" in e.value.message()
        assert c.is_model_ready("add_sub")
        c.load_model("add_sub", config=json.dumps({**base, "response_cache": {"enable": True}}))
        index = c.get_model_repository_index()
        rows = index if protocol == "http" else [{"name": m.name, "reason": m.reason} for m in index.models]
        reasons = [r["reason"] for r in rows if r["name"] == "add_sub"]
        assert reasons and all("response_cache.enable is not implemented" in r for r in reasons)
        assert "response_cache.enable" in srv.log()
    finally:
        c.close()
