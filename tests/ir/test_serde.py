"""ONNX load/save round trips losslessly; bad files give clear load errors."""
from __future__ import annotations

import copy
import glob
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from onnx import helper, numpy_helper

import tuili
from tuili.errors import InvalidGraphError, ModelLoadError
from tuili.ir import from_model_proto
from tuili.ir.core import Graph, Tensor
from tuili.ir.serde import to_model_proto

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def canonical(msg):
    """Drop explicitly-set default scalars (proto2 serializes them; they mean the same)."""
    for fd, val in list(msg.ListFields()):
        if fd.type == FD.TYPE_MESSAGE:
            if fd.is_repeated:
                for m in val:
                    canonical(m)
            else:
                canonical(val)
        elif not fd.is_repeated and val == fd.default_value:
            msg.ClearField(fd.name)
    return msg


def same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    return canonical(copy.deepcopy(a)).SerializeToString() == canonical(copy.deepcopy(b)).SerializeToString()


def shipped_models() -> list[str]:
    return sorted(glob.glob(str(DATA / "*" / "*" / "model.onnx")))


def test_every_backend_node_model_round_trips():
    from onnx.backend.test.case.node import collect_testcases

    bad = [c.name for c in collect_testcases(None) if not same_model(from_model_proto(c.model).to_proto(), c.model)]
    assert not bad, f"{len(bad)} models changed on round trip, e.g. {bad[:5]}"


@pytest.mark.parametrize("path", shipped_models(), ids=lambda p: Path(p).parent.name)
def test_shipped_models_round_trip_through_files(path, tmp_path):
    original = onnx.load(path)
    out = tmp_path / "m.onnx"
    tuili.load(path).save(out)
    assert same_model(onnx.load(out), original)


def test_round_trip_gives_bit_identical_onnxruntime_outputs(tmp_path):
    path = DATA / "pytorch-converted" / "test_Conv2d" / "model.onnx"
    out = tmp_path / "conv.onnx"
    tuili.load(path).save(out)
    arg = ort.InferenceSession(str(path)).get_inputs()[0]
    feeds = {arg.name: np.random.default_rng(0).random(arg.shape, dtype=np.float32)}
    a = ort.InferenceSession(str(path)).run(None, feeds)
    b = ort.InferenceSession(str(out)).run(None, feeds)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)


def _model_with_metadata() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "W")
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm", doc_string="matmul doc")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["N", 4])], [w],
                              doc_string="graph doc")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.x", 1)],
                              producer_name="tests", doc_string="model doc")
    onnx.helper.set_model_props(model, {"author": "tuili", "license": "MIT"})
    return model


def test_external_data_round_trip(tmp_path):
    model = _model_with_metadata()
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(model, src, save_as_external_data=True, location="weights.bin", size_threshold=0)
    graph = tuili.load(src)
    assert graph.external_locations == {"W": "weights.bin"}
    np.testing.assert_array_equal(graph.initializers["W"].const, np.arange(12, dtype=np.float32).reshape(3, 4))
    dst = tmp_path / "dst" / "m.onnx"
    graph.save(dst)
    assert (dst.parent / "weights.bin").is_file()
    saved = onnx.load(dst, load_external_data=False)
    assert onnx.external_data_helper.uses_external_data(saved.graph.initializer[0])
    assert same_model(onnx.load(dst), onnx.load(src))
    assert graph.metadata_props == {"author": "tuili", "license": "MIT"}
    assert graph.opset_imports == {"": 17, "com.x": 1}


def test_missing_external_data_file_is_named(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(_model_with_metadata(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelLoadError, match="w.bin"):
        tuili.load(path)


def test_truncated_file_gives_load_error(tmp_path):
    data = _model_with_metadata().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        tuili.load(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage\xff" * 10, b"not a model at all"])
def test_corrupt_or_empty_file_gives_load_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        tuili.load(path)


def test_missing_file():
    with pytest.raises(ModelLoadError, match="does not exist"):
        tuili.load("/nonexistent/model.onnx")


def _graph(nodes, inputs=("X",), outputs=("Y",)):
    vi = lambda n: helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2])  # noqa: E731
    return helper.make_model(helper.make_graph(nodes, "g", [vi(n) for n in inputs], [vi(n) for n in outputs]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_cycle_is_rejected_with_node_names():
    model = _graph([helper.make_node("Add", ["X", "B"], ["A"], name="first"),
                    helper.make_node("Relu", ["A"], ["B"], name="second"),
                    helper.make_node("Identity", ["A"], ["Y"], name="out")])
    with pytest.raises(InvalidGraphError, match=r"cycle through .*'first'.*'second'"):
        tuili.load(model)


def test_dangling_input_is_rejected_with_node_name():
    model = _graph([helper.make_node("Add", ["X", "nowhere"], ["Y"], name="adder")])
    with pytest.raises(InvalidGraphError, match=r"'adder'.*'nowhere'.*dangling"):
        tuili.load(model)


def test_duplicate_producer_is_rejected():
    model = _graph([helper.make_node("Relu", ["X"], ["Y"], name="a"), helper.make_node("Relu", ["X"], ["Y"], name="b")])
    with pytest.raises(InvalidGraphError, match="produced twice"):
        tuili.load(model)


def test_unsorted_nodes_are_sorted_stably():
    model = _graph([helper.make_node("Relu", ["A"], ["Y"], name="late"),
                    helper.make_node("Neg", ["X"], ["A"], name="early")])
    graph = tuili.load(model)
    assert [n.name for n in graph.nodes] == ["early", "late"]
    graph.validate()


def test_replace_all_uses_with_rewires_consumers_and_outputs():
    graph = tuili.load(_graph([helper.make_node("Neg", ["X"], ["A"], name="n"),
                               helper.make_node("Relu", ["A"], ["Y"], name="r")]))
    relu = graph.nodes[1]
    relu.outputs[0].replace_all_uses_with(graph.values["A"])
    graph.remove_node(relu)
    graph.validate()
    assert graph.outputs[0].name == "A" and not graph.values["X"].uses[0][0] is relu


def test_saving_an_initializer_whose_data_was_cleared_names_it():
    graph = Graph()
    x, w = graph.add_input("x", 1, (2,)), graph.add_initializer("w", np.ones(2, np.float32))
    graph.outputs = [graph.add_node("Add", [x, w]).outputs[0]]
    w.const = None  # was an AttributeError on None while writing the initializers
    with pytest.raises(InvalidGraphError, match="initializer 'w' holds no data"):
        to_model_proto(graph)


def test_a_tensor_without_data_is_named():
    with pytest.raises(InvalidGraphError, match="tensor 't' has neither an array nor a TensorProto"):
        Tensor("t").numpy()
