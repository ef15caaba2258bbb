"""SoftmaxCrossEntropyLoss / NegativeLogLikelihoodLoss against onnxruntime: reductions,
class weights, ignore_index (including an index outside the class range), extra dims,
and the optional log_prob output."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops._ortref import assert_same, run_tuili
from tuili.errors import KernelError

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def loss_case(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 5))
    extra = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    scores = (rng.standard_normal((n, c) + extra) * 2).astype(np.float32)
    labels = rng.integers(0, c, (n,) + extra).astype(draw(st.sampled_from([np.int64, np.int32])))
    weights = rng.random(c).astype(np.float32) + 0.1 if draw(st.booleans()) else None
    attrs = {"reduction": draw(st.sampled_from(["none", "sum", "mean"]))}
    ignore = draw(st.sampled_from([None, 0, 1, -1]))
    if ignore is not None:
        attrs["ignore_index"] = ignore
        if labels.size > 1:  # one ignored entry, and keep one that counts (mean stays finite)
            labels.flat[0] = ignore
            labels.flat[-1] = (ignore + 1) % c
    return scores, labels, weights, attrs


@SETTINGS
@given(loss_case())
def test_softmax_cross_entropy_loss(case):
    scores, labels, weights, attrs = case
    inputs = [scores, labels] + ([weights] if weights is not None else [])
    assert_same("SoftmaxCrossEntropyLoss", inputs, 2, 13, rtol=1e-5, atol=1e-5, **attrs)


@SETTINGS
@given(loss_case())
def test_negative_log_likelihood_loss(case):
    scores, labels, weights, attrs = case
    logp = scores - np.log(np.sum(np.exp(scores), axis=1, keepdims=True))
    inputs = [logp.astype(np.float32), labels] + ([weights] if weights is not None else [])
    assert_same("NegativeLogLikelihoodLoss", inputs, 1, 13, rtol=1e-5, atol=1e-5, **attrs)


def test_float64_and_out_of_range_target():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 4))
    labels = np.array([0, 3, 2], np.int64)
    assert_same("SoftmaxCrossEntropyLoss", [scores, labels], 2, 13, rtol=1e-12, atol=1e-12)
    with pytest.raises(KernelError, match="target values"):
        run_tuili("NegativeLogLikelihoodLoss", [scores, np.array([0, 4, 1], np.int64)], 1, 13)
