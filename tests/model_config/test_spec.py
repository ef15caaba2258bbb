"""TensorSpec (one input/output, any dtype spelling), ModelSpec (a configured model's tensors), and the
layering that lets backends and serve share them."""
from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import torch

from tuili import dtypes, model_config
from tuili.errors import ConfigError
from tuili.model_config import ModelSpec, TensorSpec, parse_model_config


@pytest.mark.parametrize("spelling", ["FP32", "TYPE_FP32", "tensor(float)", "float", np.float32, np.dtype("float32"),
                                      torch.float32, dtypes.FLOAT])
def test_tensor_spec_keeps_the_v2_name_of_any_spelling(spelling):
    s = TensorSpec("x", spelling, [-1, 3])
    assert s.datatype == "FP32" and s.dtype is dtypes.FLOAT and s.np_dtype == np.float32


def test_tensor_spec_dynamic_dimensions_are_minus_one():
    # onnxruntime writes symbols and None; torch and configs write -1
    assert TensorSpec("x", "tensor(string)", ["batch", None, 3, -1, 0]).shape == [-1, -1, 3, -1, 0]
    assert TensorSpec("x", "BYTES", []).np_dtype == np.dtype(object)


@pytest.mark.parametrize("datatype, words", [
    ("FP33", ["unknown element type", "'FP33'"]),
    ("tensor(float8e4m3fn)", ["float8e4m3fn", "no KServe V2 datatype"]),
    (np.complex64, ["complex64", "no KServe V2 datatype"]),
    ("seq(tensor(float))", ["seq(tensor(float))"]),
])
def test_tensor_spec_names_a_type_it_cannot_carry(datatype, words):
    with pytest.raises(dtypes.UnknownDTypeError) as ei:
        TensorSpec("x", datatype, [1])
    for w in words:
        assert w in str(ei.value)


CONFIG = """
name: "m" max_batch_size: 8
input [ { name: "image" data_type: TYPE_UINT8 dims: [ 64 ] reshape { shape: [ 8, 8 ] } },
        { name: "mask" data_type: TYPE_BOOL dims: [ -1 ] optional: true } ]
output [ { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" },
         { name: "name" data_type: TYPE_STRING dims: [ 1 ] reshape { shape: [ ] } } ]
"""


def test_model_spec_has_both_the_protocol_and_the_model_shapes(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\nemu\n")
    spec = ModelSpec(parse_model_config(CONFIG), str(tmp_path))
    image, mask = spec.inputs["image"], spec.inputs["mask"]
    probs, name = spec.outputs["probs"], spec.outputs["name"]
    assert (image.datatype, image.dims, image.reshape, image.shape) == ("UINT8", [64], [8, 8], [-1, 8, 8])
    assert spec.full_shape(image) == [-1, 64] and image.np_dtype == np.uint8
    assert mask.optional and spec.required_inputs == ["image"]
    assert probs.labels == ["cat", "dog", "emu"] and probs.shape == [-1, 3]
    assert (name.datatype, name.shape, spec.full_shape(name)) == ("BYTES", [-1], [-1, 1])
    unbatched = ModelSpec(parse_model_config(CONFIG.replace("max_batch_size: 8", "max_batch_size: 0")))
    assert unbatched.full_shape(unbatched.inputs["image"]) == [64] and unbatched.inputs["image"].shape == [8, 8]
    assert unbatched.outputs["probs"].labels is None  # no model directory given


def test_full_shape_refuses_a_spec_that_has_no_config_dims():
    spec = ModelSpec(parse_model_config(CONFIG))
    with pytest.raises(ConfigError, match="tensor 'x' has no config dims"):
        spec.full_shape(TensorSpec("x", "FP32", [-1, 3]))


SRC = pathlib.Path(model_config.__file__).resolve().parents[1]


def _imports(package: str) -> set[str]:
    """Every tuili module that the modules of ``package`` import, at any level of the code."""
    found = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return {m for m in found if m.startswith("tuili.")}


@pytest.mark.parametrize("package, forbidden", [
    ("model_config", ("tuili.serve", "tuili.backends", "tuili.runtime")),
    ("backends", ("tuili.serve",)),
])
def test_layering(package, forbidden):
    """backends import model_config and runtime, serve imports backends and model_config: no cycle."""
    bad = sorted(m for m in _imports(package) if m.startswith(forbidden))
    assert not bad, f"tuili.{package} imports {bad}"
