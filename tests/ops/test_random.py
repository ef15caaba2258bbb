"""Random generators (tuili.ops.random): shapes, dtypes, seeding and distributions."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from tests.ops._ortref import run_tuili


def test_seeded_generators_are_reproducible_and_shaped():
    a = run_tuili("RandomNormal", [], opset=1, shape=[3, 4], seed=1.0, mean=2.0, scale=0.5)[0]
    b = run_tuili("RandomNormal", [], opset=1, shape=[3, 4], seed=1.0, mean=2.0, scale=0.5)[0]
    c = run_tuili("RandomNormal", [], opset=1, shape=[3, 4], seed=2.0, mean=2.0, scale=0.5)[0]
    assert a.shape == (3, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    u = run_tuili("RandomUniform", [], opset=1, shape=[1000], low=-2.0, high=3.0, dtype=TensorProto.DOUBLE)[0]
    assert u.dtype == np.float64 and u.min() >= -2 and u.max() < 3 and abs(u.mean() - 0.5) < 0.3


def test_like_variants_follow_input():
    x = np.zeros((2, 5), np.float16)
    assert run_tuili("RandomNormalLike", [x], opset=1)[0].dtype == np.float16
    y = run_tuili("RandomUniformLike", [x], opset=1, dtype=TensorProto.FLOAT)[0]
    assert y.shape == (2, 5) and y.dtype == np.float32


def test_multinomial_and_bernoulli_distributions():
    logits = np.log(np.array([[0.1, 0.0001, 0.9], [1.0, 1e-9, 1e-9]], np.float32))
    s = run_tuili("Multinomial", [logits], opset=7, sample_size=4000, seed=3.0)[0]
    assert s.shape == (2, 4000) and s.dtype == np.int32
    assert abs((s[0] == 2).mean() - 0.9) < 0.03 and (s[1] == 0).all()
    p = np.full(4000, 0.25, np.float32)
    b = run_tuili("Bernoulli", [p], opset=15, seed=0.0)[0]
    assert b.dtype == np.float32 and set(np.unique(b)) <= {0.0, 1.0} and abs(b.mean() - 0.25) < 0.03
    assert run_tuili("Bernoulli", [p], opset=15, dtype=TensorProto.INT64)[0].dtype == np.int64
