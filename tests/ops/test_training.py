"""Adagrad / Adam / Momentum (ai.onnx.preview.training) against onnx.reference, with two
tensors optimized at once (variadic inputs) and non-zero regularization."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from tests.ops._ortref import make_model, run_tuili

DOMAIN = "ai.onnx.preview.training"


def _both(op, inputs, n_out, **attrs):
    model, _ = make_model(op, inputs, n_out, 1, DOMAIN, **attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ReferenceEvaluator(model).run(None, {f"in{i}": a for i, a in enumerate(inputs)})
    got = run_tuili(op, inputs, n_out, 1, DOMAIN, **attrs)
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _tensors(k, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (5,)]
    return [rng.standard_normal(s).astype(np.float32) ** (2 if j >= 2 else 1) for j in range(k) for s in shapes]


@pytest.mark.parametrize("t", [0, 3])
def test_adagrad(t):
    ins = [np.array(0.1, np.float32), np.array(t, np.int64), *_tensors(3)]
    _both("Adagrad", ins, 4, decay_factor=0.1, epsilon=1e-6, norm_coefficient=0.01)


@pytest.mark.parametrize("t", [0, 3])
def test_adam(t):
    ins = [np.array(0.1, np.float32), np.array(t, np.int64), *_tensors(4)]
    _both("Adam", ins, 6, alpha=0.8, beta=0.95, norm_coefficient=0.01, norm_coefficient_post=0.02)


@pytest.mark.parametrize("mode", ["standard", "nesterov"])
@pytest.mark.parametrize("t", [0, 2])
def test_momentum(mode, t):
    ins = [np.array(0.1, np.float32), np.array(t, np.int64), *_tensors(3)]
    _both("Momentum", ins, 4, alpha=0.9, beta=0.5, mode=mode, norm_coefficient=0.01)
