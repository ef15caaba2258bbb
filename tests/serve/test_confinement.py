"""Repository confinement: every path a config or a load request names stays inside the model's
directory (symlinks resolved), unless the repository allows paths outside; the files a load request
sends go to a private temporary model directory. In-process (ModelRepository) and against real
`tuili serve` processes over HTTP and gRPC."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf import json_format, text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import copy_repo
from tests.serve.repo_builder import _save, _write, add_sub_model, linear_classifier
from tuili.model_config import ModelConfig, ModelConfigError
from tuili.serve.repository import ModelRepository

ADD_SUB = {"name": "add_sub", "backend": "onnxruntime", "max_batch_size": 8,
           "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]},
                     {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [16]}],
           "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]},
                      {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [16]}]}
CLASSIFIER = {"name": "classifier", "platform": "onnxruntime_onnx", "max_batch_size": 16,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}],
              "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "labels.txt"}]}

# A python model that leaves a mark when its file is executed: a refused file must never run.
MARKING_PY = '''
import os
open(os.environ.get("TUILI_TEST_MARK", "/nonexistent/mark"), "w").close()

class TritonPythonModel:
    def execute(self, requests):
        return []
'''


def _load(repo: ModelRepository, name: str, config: dict | None = None):
    plan = repo.plan(name, json.dumps(config) if config is not None else None)
    return repo.load_instances(plan, plan.versions[-1][1])


@pytest.fixture
def outside(tmp_path):
    """A directory next to the repository, holding files a config must not reach."""
    d = tmp_path / "outside"
    _save(add_sub_model(), str(d / "model.onnx"))
    (d / "labels.txt").write_text("secret_0\nsecret_1\n")
    (d / "model.py").write_text(MARKING_PY)
    return d


@pytest.fixture
def repo_dir(tmp_path):
    root = tmp_path / "repo"
    _save(add_sub_model(), str(root / "add_sub" / "1" / "model.onnx"))
    model, _, _ = linear_classifier()
    _save(model, str(root / "classifier" / "1" / "model.onnx"))
    _write(str(root / "classifier" / "labels.txt"), "\n".join(f"digit_{i}" for i in range(10)) + "\n")
    _write(str(root / "classifier" / "config.pbtxt"), 'name: "classifier" platform: "onnxruntime_onnx" max_batch_size: 16\n'
           'output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]\n')
    _write(str(root / "pymodel" / "1" / "model.py"), MARKING_PY)
    return root


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlink"])
def test_model_file_outside_the_model_directory_is_refused(repo_dir, outside, escape):
    target = str(outside / "model.onnx")
    if escape == "symlink":
        os.symlink(target, repo_dir / "add_sub" / "1" / "linked.onnx")
        name = "linked.onnx"
    else:
        name = target if escape == "absolute" else os.path.relpath(target, repo_dir / "add_sub" / "1")
    repo = ModelRepository([str(repo_dir)])
    repo.scan()
    with pytest.raises(ModelConfigError) as e:
        _load(repo, "add_sub", {**ADD_SUB, "default_model_filename": name})
    assert e.value.field == "default_model_filename"
    assert name in str(e.value) and target in str(e.value) and "outside the model directory" in str(e.value)
    # the trusted-setup opt-out loads it
    repo = ModelRepository([str(repo_dir)], allow_paths_outside=True)
    repo.scan()
    config, instances = _load(repo, "add_sub", {**ADD_SUB, "default_model_filename": name})
    assert instances[0].infer({"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)})["OUTPUT0"][0, 0] == 2


def test_symlinked_default_model_file_is_refused_too(repo_dir, outside):
    os.remove(repo_dir / "add_sub" / "1" / "model.onnx")
    os.symlink(outside / "model.onnx", repo_dir / "add_sub" / "1" / "model.onnx")
    repo = ModelRepository([str(repo_dir)])
    repo.scan()
    with pytest.raises(ModelConfigError, match="model.onnx.*outside the model directory"):
        _load(repo, "add_sub")


def test_a_symlink_that_stays_inside_is_fine(repo_dir):
    os.rename(repo_dir / "add_sub" / "1" / "model.onnx", repo_dir / "add_sub" / "real.onnx")
    os.symlink("../real.onnx", repo_dir / "add_sub" / "1" / "model.onnx")
    repo = ModelRepository([str(repo_dir)])
    repo.scan()
    config, instances = _load(repo, "add_sub")
    assert [t.name for t in instances[0].inputs] == ["INPUT0", "INPUT1"]


def test_python_model_file_outside_is_refused_before_it_runs(repo_dir, outside, tmp_path, monkeypatch):
    mark = tmp_path / "executed"
    monkeypatch.setenv("TUILI_TEST_MARK", str(mark))
    cfg = {"name": "pymodel", "backend": "python", "default_model_filename": str(outside / "model.py"),
           "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
           "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]}
    repo = ModelRepository([str(repo_dir)])
    repo.scan()
    with pytest.raises(ModelConfigError, match=r"field 'default_model_filename'.*outside the model directory"):
        _load(repo, "pymodel", cfg)
    assert not mark.exists()
    _load(repo, "pymodel", {**cfg, "default_model_filename": "model.py"})  # its own file runs
    assert mark.exists()


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_label_file_outside_is_refused(repo_dir, outside, how):
    target = str(outside / "labels.txt")
    if how == "symlink":
        os.symlink(target, repo_dir / "classifier" / "linked.txt")
        name = "linked.txt"
    else:
        name = target if how == "absolute" else "../../outside/labels.txt"
    cfg = {**CLASSIFIER, "output": [{**CLASSIFIER["output"][0], "label_filename": name}]}
    repo = ModelRepository([str(repo_dir)])
    repo.scan()
    with pytest.raises(ModelConfigError) as e:
        _load(repo, "classifier", cfg)
    assert e.value.field == "output[0].label_filename" and name in str(e.value) and target in str(e.value)
    # the same file in config.pbtxt is refused too, with its line
    (repo_dir / "classifier" / "config.pbtxt").write_text(
        'name: "classifier" platform: "onnxruntime_onnx" max_batch_size: 16\n'
        f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "{name}" }} ]\n')
    with pytest.raises(ModelConfigError, match=r"config.pbtxt:2:.*label_filename.*outside the model directory"):
        _load(repo, "classifier")


def test_external_data_outside_is_refused(tmp_path):
    """An ONNX model whose initializer lives in a file outside the model directory."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root = tmp_path / "repo"
    vdir = root / "ext" / "1"
    vdir.mkdir(parents=True)
    # data beside the model: fine
    onnx.save(model, str(vdir / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    repo = ModelRepository([str(root)])
    repo.scan()
    config, instances = _load(repo, "ext")
    assert instances[0].infer({"x": np.zeros((1, 16), np.float32)})["y"][0, 5] == 5
    # data written as ../../../secret.bin (outside): refused, naming the tensor and the path
    ext = onnx.load(str(vdir / "model.onnx"), load_external_data=False)
    os.replace(vdir / "weights.bin", tmp_path / "secret.bin")
    for e in ext.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../../../secret.bin"
    onnx.save(ext, str(vdir / "model.onnx"))
    for backend in ("onnxruntime", "tuili"):
        (root / "ext" / "config.pbtxt").write_text(f'name: "ext" backend: "{backend}"\n')
        with pytest.raises(ModelConfigError, match=r"tensor 'W'.*'\.\./\.\./\.\./secret\.bin'.*outside the model dir"):
            _load(repo, "ext")


def test_load_request_files_are_staged_privately(tmp_path):
    repo = ModelRepository([str(tmp_path)])
    with repo.loading_from("fresh", {"1/model.onnx": add_sub_model().SerializeToString()}) as d:
        assert os.path.basename(d) == "fresh" and not d.startswith(str(tmp_path))
        assert stat.S_IMODE(os.stat(os.path.dirname(d)).st_mode) == 0o700
        config, instances = _load(repo, "fresh", {**ADD_SUB, "name": "fresh"})
        assert "fresh" in repo.known()
    assert os.path.isdir(d)  # it serves from there until unloaded
    repo.release("fresh")
    assert not os.path.exists(os.path.dirname(d)) and "fresh" not in repo.known()
    for bad in ("../escape.onnx", "1/../../escape.onnx", "/tmp/escape.onnx"):
        with pytest.raises(Exception, match="file:") as e, repo.loading_from("fresh", {bad: b"x"}):
            pass
        assert bad in str(e.value)
    assert "fresh" not in repo.known()
    # a failed load restores the previous source
    with repo.loading_from("fresh", {"1/model.onnx": add_sub_model().SerializeToString()}) as first:
        pass
    with pytest.raises(RuntimeError), repo.loading_from("fresh", {"1/model.onnx": b"junk"}) as second:
        raise RuntimeError("load failed")
    assert repo.model_dir("fresh") == first and not os.path.exists(second)
    repo.release("fresh")


# ------------------------------------------------------------------ real servers, HTTP and gRPC
def _staged(tmp) -> list[str]:
    return [d for d in os.listdir(tmp) if d.startswith("tuili-load-")]


def _client(srv, protocol):
    return th.InferenceServerClient(srv.http) if protocol == "http" else tg.InferenceServerClient(srv.grpc)


def _infer_add_sub(c, protocol, model="add_sub"):
    mod = th if protocol == "http" else tg
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    ins = [mod.InferInput("INPUT0", [2, 16], "FP32"), mod.InferInput("INPUT1", [2, 16], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(a)
    np.testing.assert_allclose(c.infer(model, ins).as_numpy("OUTPUT0"), 2 * a)


@pytest.fixture(scope="module")
def explicit_server(test_repo, server_factory, tmp_path_factory):
    """An explicit-mode server over a copy of the test repository, with files outside it and a
    private TMPDIR (to watch where load-request files go)."""
    base = tmp_path_factory.mktemp("confine")
    repo = copy_repo(test_repo[0], str(base / "repo"), ["add_sub", "classifier", "upper"])
    secret = base / "secret"
    _save(add_sub_model(), str(secret / "model.onnx"))
    (secret / "labels.txt").write_text("root:x:0:0\n")
    tmp = base / "tmp"
    tmp.mkdir()
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    try:
        srv = server_factory(repo, "--model-control-mode", "explicit", "--load-model", "add_sub")
    finally:
        if old is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = old
    return srv, repo, secret, tmp


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_refuses_config_paths_outside(explicit_server, protocol):
    srv, repo, secret, _ = explicit_server
    c = _client(srv, protocol)
    try:
        refusals = [
            ("add_sub", {**ADD_SUB, "default_model_filename": str(secret / "model.onnx")},
             "default_model_filename", str(secret / "model.onnx")),
            ("add_sub", {**ADD_SUB, "default_model_filename": "../../../secret/model.onnx"},
             "default_model_filename", "../../../secret/model.onnx"),
            ("add_sub", {**ADD_SUB, "default_model_filename": "../../../secret/missing.onnx"},
             "default_model_filename", "../../../secret/missing.onnx"),
            ("classifier", {**CLASSIFIER, "output": [{**CLASSIFIER["output"][0], "label_filename": "/etc/passwd"}]},
             "output[0].label_filename", "/etc/passwd"),
            ("classifier", {**CLASSIFIER, "output": [{**CLASSIFIER["output"][0], "label_filename": "../secret/labels.txt"}]},
             "output[0].label_filename", "../secret/labels.txt"),
        ]
        for name, cfg, field, path in refusals:
            with pytest.raises(InferenceServerException) as e:
                c.load_model(name, config=json.dumps(cfg))
            msg = e.value.message()
            assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), msg
            assert field in msg and path in msg and "outside the model directory" in msg, msg
        _infer_add_sub(c, protocol)  # the refused reload left add_sub serving
        c.load_model("classifier", config=json.dumps(CLASSIFIER))  # a good override loads
        assert c.is_model_ready("classifier")
        c.unload_model("classifier")
    finally:
        c.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_loads_request_files_into_a_private_directory(explicit_server, protocol):
    srv, repo, _, tmp = explicit_server
    name = f"sent_{protocol}"
    c = _client(srv, protocol)
    files = {"file:1/model.onnx": add_sub_model().SerializeToString()}  # tritonclient's keys carry "file:"
    try:
        # refusals: paths leaving the model directory, files without a config
        for bad in ("../evil.onnx", "1/../../evil.onnx", "/tmp/evil.onnx"):
            with pytest.raises(InferenceServerException) as e:
                c.load_model(name, config=json.dumps({**ADD_SUB, "name": name}), files={f"file:{bad}": b"x"})
            assert f"file:{bad}" in e.value.message(), e.value.message()
        with pytest.raises(InferenceServerException, match="config"):
            c.load_model(name, files=files)
        assert not _staged(tmp) and not c.is_model_ready(name)
        # a good load: served from a 0700 directory under the server's TMPDIR, not the repository
        c.load_model(name, config=json.dumps({**ADD_SUB, "name": name}), files=files)
        assert c.is_model_ready(name) and name not in os.listdir(repo)
        (staged,) = _staged(tmp)
        assert stat.S_IMODE(os.stat(tmp / staged).st_mode) == 0o700 and os.listdir(tmp / staged) == [name]
        _infer_add_sub(c, protocol, name)
        c.unload_model(name)
        assert not _staged(tmp)  # removed on unload
    finally:
        c.close()


# ------------------------------------------------------------------ symlinks out of the model directory, at start and by API
LINKED = {  # model -> (its config.pbtxt, the link inside its directory, the file outside it the link points to)
    "ln_default": ('name: "ln_default" backend: "onnxruntime" max_batch_size: 8\n', "1/model.onnx", "model.onnx"),
    "ln_named": ('name: "ln_named" backend: "onnxruntime" max_batch_size: 8 default_model_filename: "linked.onnx"\n',
                 "1/linked.onnx", "model.onnx"),
    "ln_py": ('name: "ln_py" backend: "python"\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
              'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n', "1/model.py", "model.py"),
    "ln_labels": ('name: "ln_labels" platform: "onnxruntime_onnx" max_batch_size: 16\n'
                  'output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]\n',
                  "labels.txt", "labels.txt"),
    "ln_noconfig": (None, "1/model.onnx", "model.onnx"),  # no config.pbtxt: completed from the (linked) model
}


@pytest.fixture(scope="module")
def linked_repo(tmp_path_factory):
    """A repository whose models link their model file (backend default and default_model_filename),
    python file or label file to a directory outside it; returns (repo, outside, mark file)."""
    base = tmp_path_factory.mktemp("linked")
    outside = base / "outside"
    _save(add_sub_model(), str(outside / "model.onnx"))
    (outside / "model.py").write_text(MARKING_PY)
    (outside / "labels.txt").write_text("".join(f"secret_{i}\n" for i in range(10)))
    repo = base / "repo"
    model, _, _ = linear_classifier()
    _save(model, str(repo / "ln_labels" / "1" / "model.onnx"))
    for name, (config, link, target) in LINKED.items():
        if config is not None:
            _write(str(repo / name / "config.pbtxt"), config)
        os.makedirs(repo / name / os.path.dirname(link), exist_ok=True)
        os.symlink(outside / target, repo / name / link)
    return repo, outside, base / "executed"


def _start_marking(server_factory, repo, mark, *extra):
    old = os.environ.get("TUILI_TEST_MARK")
    os.environ["TUILI_TEST_MARK"] = str(mark)
    try:
        return server_factory(str(repo), *extra)
    finally:
        if old is None:
            os.environ.pop("TUILI_TEST_MARK")
        else:
            os.environ["TUILI_TEST_MARK"] = old


def test_symlinks_out_of_the_model_directory_are_refused_at_start_and_by_the_load_api(linked_repo, server_factory):
    repo, outside, mark = linked_repo
    loads = [a for name in LINKED for a in ("--load-model", name)]
    srv = _start_marking(server_factory, repo, mark, "--model-control-mode", "explicit", *loads)
    try:
        c = th.InferenceServerClient(srv.http)
        index = {m["name"]: m for m in c.get_model_repository_index()}
        for name, (_, _, target) in LINKED.items():  # at start: each named in the index with the reason
            assert not c.is_model_ready(name), name
            reason = index[name].get("reason", "")
            assert "outside the model directory" in reason and str(outside / target) in reason, (name, reason)
        for protocol in ("http", "grpc"):
            c = _client(srv, protocol)
            try:
                for name, (config, _, target) in LINKED.items():
                    override = json.dumps(json_format.MessageToDict(text_format.Parse(config or f'name: "{name}"',
                                                                                      ModelConfig())))
                    for how in ({}, {"config": override}):  # from config.pbtxt on disk, and with a JSON override
                        with pytest.raises(InferenceServerException) as e:
                            c.load_model(name, **how)
                        msg = e.value.message()
                        assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), (name, how, msg)
                        assert msg.startswith(f"failed to load '{name}'"), msg
                        assert "outside the model directory" in msg and str(outside / target) in msg, (name, how, msg)
                        assert not c.is_model_ready(name)
            finally:
                c.close()
        assert not mark.exists()  # the linked model.py never ran
    finally:
        srv.stop()
    # a trusted setup loads them all
    srv = _start_marking(server_factory, repo, mark, "--allow-paths-outside-repository")
    try:
        c = th.InferenceServerClient(srv.http)
        assert all(c.is_model_ready(name) for name in LINKED), srv.log()
        assert mark.exists()
    finally:
        srv.stop()
