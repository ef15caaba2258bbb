"""Models optimized by onnxruntime's own tools load and run in tuili, matching onnxruntime: its
transformer optimizer (Attention, SkipLayerNormalization, BiasGelu, ...) and its graph optimizer's
saved ORT_ENABLE_EXTENDED graph (FusedConv, FusedGemm, FusedMatMul, BiasGelu)."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tuili
from tuili.zoo.core import example_inputs


def _compare(path, feeds, atol=1e-4):
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = tuili.InferenceSession(str(path)).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)


def _ms_ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft"}


def test_transformer_optimizer_bert(zoo_onnx, tmp_path):
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # "producer not matched"
    out = tmp_path / "bert_small.ortbert.onnx"
    optimize_model(str(zoo_onnx("bert_small")), model_type="bert", num_heads=0, hidden_size=0).save_model_to_file(
        str(out))
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= _ms_ops(out)
    _compare(out, example_inputs("bert_small", 2))


@pytest.mark.parametrize("name", ["bert_small", "digits_cnn"])
def test_onnxruntime_extended_graph(zoo_onnx, tmp_path, name):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / f"{name}.ortext.onnx")
    ort.InferenceSession(str(zoo_onnx(name)), so, providers=["CPUExecutionProvider"])
    assert _ms_ops(so.optimized_model_filepath)
    _compare(so.optimized_model_filepath, example_inputs(name, 2))
