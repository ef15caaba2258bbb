"""Each backend loads a model directory and runs it; outputs checked against numpy/torch."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.serve.repo_builder import UPPER_PY, _save, _write, add_sub_model
from tuili.backends.base import create_backend, resolve_backend_name
from tuili.errors import ConfigError, ModelLoadError
from tuili.model_config import autocomplete, parse_model_config
from tuili.serve.repository import ModelRepository, select_versions


def _cfg(text: str):
    return parse_model_config(text, validate=False)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    _save(add_sub_model(), str(d / "1" / "model.onnx"))
    return str(d)


def _check_add_sub(b):
    a = np.random.rand(3, 16).astype(np.float32)
    c = np.random.rand(3, 16).astype(np.float32)
    out = b.infer({"INPUT0": a, "INPUT1": c})
    np.testing.assert_allclose(out["OUTPUT0"], a + c, rtol=1e-6)
    np.testing.assert_allclose(out["OUTPUT1"], a - c, rtol=1e-6)


def test_onnxruntime_backend(onnx_dir):
    b = create_backend("onnxruntime")
    b.load(onnx_dir, os.path.join(onnx_dir, "1"), _cfg('name: "m"'))
    assert [(s.name, s.datatype, s.shape) for s in b.inputs] == [("INPUT0", "FP32", [-1, 16]), ("INPUT1", "FP32", [-1, 16])]
    _check_add_sub(b)
    cfg = autocomplete(_cfg('name: "m"'), b.inputs, b.outputs)
    assert cfg.max_batch_size > 0 and list(cfg.input[0].dims) == [16]
    b.unload()


def test_tuili_backend(onnx_dir):
    try:
        from tuili import InferenceSession  # noqa: F401
    except ImportError:
        pytest.skip("tuili.InferenceSession is not importable yet")
    b = create_backend("tuili")
    b.load(onnx_dir, os.path.join(onnx_dir, "1"), _cfg('name: "m" backend: "tuili"'))
    assert [s.name for s in b.inputs] == ["INPUT0", "INPUT1"]
    _check_add_sub(b)


def test_onnx_output_the_server_cannot_carry_is_a_load_error(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("SequenceConstruct", ["x"], ["seq"])], "g", [x], [seq])
    _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "1" / "model.onnx"))
    b = create_backend("onnxruntime")
    with pytest.raises(ModelLoadError, match=r"model.onnx: tensor 'seq' cannot be served: .*seq\(tensor\(float\)\)"):
        b.load(str(tmp_path), str(tmp_path / "1"), _cfg('name: "m"'))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        return self.lin(x) + y, x.sum(dim=1, keepdim=True)


TORCH_CFG = '''
name: "t" backend: "pytorch" max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "out" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "total" data_type: TYPE_FP32 dims: [ 1 ] } ]
'''


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("kind", ["torchscript", "exported"])
def test_torch_backend(tmp_path, kind):
    torch.manual_seed(0)
    net = _Net().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    (tmp_path / "1").mkdir()
    if kind == "torchscript":
        torch.jit.save(torch.jit.script(net), str(tmp_path / "1" / "model.pt"))
    else:
        ep = torch.export.export(net, (x, y), dynamic_shapes=({0: torch.export.Dim("b", max=8)}, {0: torch.export.Dim("b", max=8)}))
        torch.export.save(ep, str(tmp_path / "1" / "model.pt2"))
    assert resolve_backend_name("", "", str(tmp_path / "1")) == "pytorch"
    b = create_backend("pytorch")
    b.load(str(tmp_path), str(tmp_path / "1"), _cfg(TORCH_CFG))
    out = b.infer({"x": x.numpy(), "y": y.numpy()})
    with torch.no_grad():
        want = net(x, y)
    np.testing.assert_allclose(out["out"], want[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["total"], want[1].numpy(), rtol=1e-5)


class _Cast(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype, words", [
    (torch.float8_e4m3fn, ["float8e4m3fn", "has no KServe V2 datatype"]),  # in the table, but V2 cannot carry it
    (torch.complex32, ["unknown torch dtype", "torch.complex32"]),  # not in the table at all
])
def test_torch_model_with_a_dtype_the_server_cannot_carry_is_a_load_error(tmp_path, dtype, words):
    """The model's own metadata types the tensors when the config does not; a type with no V2 name is
    an error naming the file, the tensor and the type (it used to be served as FP32)."""
    ep = torch.export.export(_Cast(dtype), (torch.randn(2, 4),))
    (tmp_path / "1").mkdir()
    torch.export.save(ep, str(tmp_path / "1" / "model.pt2"))
    b = create_backend("pytorch")
    with pytest.raises(ModelLoadError) as ei:
        b.load(str(tmp_path), str(tmp_path / "1"), _cfg('name: "t"'))
    msg = str(ei.value)
    assert "model.pt2" in msg and "'output__0'" in msg
    for w in words:
        assert w in msg


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_without_typed_config_is_a_config_error(tmp_path):
    (tmp_path / "1").mkdir()
    torch.jit.save(torch.jit.script(_Net().eval()), str(tmp_path / "1" / "model.pt"))
    b = create_backend("pytorch")
    with pytest.raises(ConfigError, match=r"does not say the type of x, y.*config.pbtxt"):
        b.load(str(tmp_path), str(tmp_path / "1"), _cfg('name: "t"'))


def test_python_backend(tmp_path):
    _write(str(tmp_path / "1" / "model.py"), UPPER_PY)
    cfg = _cfg('name: "upper" backend: "python" input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ] '
               'output [ { name: "TEXT_OUT" data_type: TYPE_STRING dims: [ -1 ] }, { name: "LENGTH" data_type: TYPE_INT32 dims: [ -1 ] } ]')
    b = create_backend("python")
    b.load(str(tmp_path), str(tmp_path / "1"), cfg)
    res = b.infer_many([{"TEXT": np.array([b"ab", b"c"], dtype=object)}, {"TEXT": np.array([b"xyz"], dtype=object)}])
    assert list(res[0]["TEXT_OUT"]) == [b"AB", b"C"] and list(res[1]["LENGTH"]) == [3]
    b.unload()


def test_python_backend_errors(tmp_path):
    _write(str(tmp_path / "1" / "model.py"), "class Nope: pass\n")
    b = create_backend("python")
    with pytest.raises(ModelLoadError, match="TritonPythonModel"):
        b.load(str(tmp_path), str(tmp_path / "1"), _cfg('name: "p" output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]'))


def test_missing_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "1").mkdir()
    b = create_backend("onnxruntime")
    with pytest.raises(ModelLoadError, match="no model file"):
        b.load(str(tmp_path), str(tmp_path / "1"), _cfg('name: "m"'))
    with pytest.raises(ConfigError, match="backend"):
        resolve_backend_name("", "", str(tmp_path / "1"))
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_backend_name("tensorrt", "", None)


def test_version_policies(tmp_path):
    assert select_versions(_cfg('name: "m"'), [1, 3, 2]) == [3]
    assert select_versions(_cfg('name: "m" version_policy { latest { num_versions: 2 } }'), [1, 3, 2]) == [2, 3]
    assert select_versions(_cfg('name: "m" version_policy { all { } }'), [1, 3, 2]) == [1, 2, 3]
    assert select_versions(_cfg('name: "m" version_policy { specific { versions: [ 1, 3 ] } }'), [1, 2, 3]) == [1, 3]
    with pytest.raises(ConfigError, match="version_policy.specific"):
        select_versions(_cfg('name: "m" version_policy { specific { versions: [ 4 ] } }'), [1, 2, 3])


def test_repository_plan(tmp_path):
    for v in (1, 2, 5):
        _save(add_sub_model(), str(tmp_path / "m" / str(v) / "model.onnx"))
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m" version_policy { latest { num_versions: 2 } }')
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    repo = ModelRepository([str(tmp_path)])
    assert sorted(repo.scan()) == ["empty", "m"]
    plan = repo.plan("m")
    assert [v for v, _ in plan.versions] == ["2", "5"] and plan.backend == "onnxruntime"
    cfg, inst = repo.load_instances(plan, plan.versions[-1][1])
    assert cfg.max_batch_size > 0 and len(inst) == 1 and cfg.backend == "onnxruntime"
    with pytest.raises(ConfigError, match="no version directory"):
        repo.plan("empty")
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch_size: "eight"\n')
    with pytest.raises(ConfigError, match=r"config.pbtxt.*2"):
        repo.plan("m")
