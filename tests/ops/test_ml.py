"""Classic-ML kernels (tuili.ops.ml) against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tests.ops._ortref_shape import assert_same, run_tuili
from tuili.errors import KernelError

SETTINGS = settings(max_examples=30, deadline=None)
ML = "ai.onnx.ml"


def strs(items, shape=None):
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape or (len(items),))


@SETTINGS
@given(keys=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True),
       xs=st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=6))
def test_label_encoder_strings_to_ints_and_back(keys, xs):
    vals = list(range(10, 10 + len(keys)))
    assert_same("LabelEncoder", [strs(xs)], opset=2, domain=ML, keys_strings=keys, values_int64s=vals, default_int64=-7)
    ints = np.array([10, 11, 99, 10][: len(xs)], np.int64)
    assert_same("LabelEncoder", [ints], opset=2, domain=ML, keys_int64s=vals, values_strings=keys, default_string="?")
    assert_same("LabelEncoder", [ints], opset=2, domain=ML, keys_int64s=vals, values_floats=[0.5] * len(keys))


def test_label_encoder_float_keys_and_tensor_attrs():
    x = np.array([1.5, 2.0, np.nan, 7.0], np.float32)
    assert_same("LabelEncoder", [x], opset=2, domain=ML, keys_floats=[2.0, 1.5], values_int64s=[4, 5])
    kt = helper.make_tensor("k", TensorProto.INT64, [3], [1, 2, 3])
    vt = helper.make_tensor("v", TensorProto.DOUBLE, [3], [0.1, 0.2, 0.3])
    dt = helper.make_tensor("d", TensorProto.DOUBLE, [1], [9.0])
    (out,) = run_tuili("LabelEncoder", [np.array([3, 4, 1], np.int64)], opset=4, domain=ML,
                       keys_tensor=kt, values_tensor=vt, default_tensor=dt)
    assert out.dtype == np.float64 and out.tolist() == [0.3, 9.0, 0.1]
    with pytest.raises(KernelError, match="keys"):
        run_tuili("LabelEncoder", [x], opset=2, domain=ML, values_int64s=[1])


def test_array_feature_extractor_and_binarizer():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert_same("ArrayFeatureExtractor", [x, np.array([3, 0, 3], np.int64)], opset=1, domain=ML)
    assert_same("ArrayFeatureExtractor", [x[0, 0], np.array([1], np.int64)], opset=1, domain=ML)
    assert_same("Binarizer", [x - 10], opset=1, domain=ML, threshold=2.5)


def _random_forest(rng, n_trees, n_features, n_targets, with_member):
    modes, feats, splits, tid, fid, tleaf, fleaf, miss = [], [], [], [], [], [], [], []
    leaf_t, leaf_w, roots, members = [], [], [], []

    def build(depth):
        i = len(modes)
        for lst in (modes, feats, splits, tid, fid, tleaf, fleaf, miss):
            lst.append(0)
        mode = int(rng.integers(0, 7 if with_member else 6))
        modes[i], feats[i] = mode, int(rng.integers(0, n_features))
        splits[i] = float(rng.integers(-2, 3))
        miss[i] = int(rng.integers(0, 2))
        if mode == 6:
            members.extend([float(v) for v in rng.choice([-2, -1, 0, 1, 2], 2, replace=False)] + [np.nan])
        for side_ids, side_leaf in ((tid, tleaf), (fid, fleaf)):
            if depth == 0 or rng.random() < 0.3:
                side_leaf[i] = 1
                side_ids[i] = len(leaf_w)
                leaf_w.append(float(rng.integers(-5, 6)))
                leaf_t.append(int(rng.integers(0, n_targets)))
            else:
                side_ids[i] = build(depth - 1)
        return i

    for _ in range(n_trees):
        roots.append(build(3))
    attrs = dict(
        n_targets=n_targets, tree_roots=roots,
        nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [len(modes)], modes),
        nodes_featureids=feats,
        nodes_splits=helper.make_tensor("s", TensorProto.FLOAT, [len(splits)], splits),
        nodes_truenodeids=tid, nodes_falsenodeids=fid, nodes_trueleafs=tleaf, nodes_falseleafs=fleaf,
        nodes_missing_value_tracks_true=miss,
        leaf_targetids=leaf_t,
        leaf_weights=helper.make_tensor("w", TensorProto.FLOAT, [len(leaf_w)], leaf_w),
    )
    if members:
        attrs["membership_values"] = helper.make_tensor("mv", TensorProto.FLOAT, [len(members)], members)
    return attrs


@SETTINGS
@given(seed=st.integers(0, 10_000), n_trees=st.integers(1, 4), agg=st.integers(0, 3),
       with_member=st.booleans())
def test_tree_ensemble(seed, n_trees, agg, with_member):
    rng = np.random.default_rng(seed)
    attrs = _random_forest(rng, n_trees, 3, 2, with_member)
    x = rng.integers(-3, 4, (6, 3)).astype(np.float32)
    x[0, 0] = np.nan
    (raw,) = assert_same("TreeEnsemble", [x], opset=5, domain=ML, aggregate_function=agg, rtol=1e-5, atol=1e-6, **attrs)
    # post_transform numbering follows the spec (1 SOFTMAX, 2 LOGISTIC); onnxruntime 1.32 reads
    # 1 as LOGISTIC, so the transforms are checked against the untransformed scores instead.
    (soft,) = run_tuili("TreeEnsemble", [x], opset=5, domain=ML, aggregate_function=agg, post_transform=1, **attrs)
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    np.testing.assert_allclose(soft, e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    (logi,) = run_tuili("TreeEnsemble", [x], opset=5, domain=ML, aggregate_function=agg, post_transform=2, **attrs)
    np.testing.assert_allclose(logi, 1 / (1 + np.exp(-raw)), rtol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["TF", "IDF", "TFIDF"]),
       skip=st.integers(0, 2), min_n=st.integers(1, 2), two_d=st.booleans())
def test_tfidf_vectorizer(seed, mode, skip, min_n, two_d):
    rng = np.random.default_rng(seed)
    uni = rng.choice(6, 3, replace=False).tolist()
    bi = rng.integers(0, 6, (3, 2))
    bi = np.unique(bi, axis=0).reshape(-1).tolist()
    pool = uni + bi
    n_grams = len(uni) + len(bi) // 2
    idx = rng.permutation(n_grams).tolist()
    x = rng.integers(0, 6, (2, 7) if two_d else (9,)).astype(np.int64)
    assert_same("TfIdfVectorizer", [x], opset=9, mode=mode, min_gram_length=min_n, max_gram_length=2,
                max_skip_count=skip, ngram_counts=[0, len(uni)], ngram_indexes=idx, pool_int64s=pool,
                weights=[float(w) for w in rng.uniform(0.5, 2, n_grams)], rtol=1e-6)


def test_tfidf_strings():
    x = strs(["a", "b", "a", "b", "c"])
    assert_same("TfIdfVectorizer", [x], opset=9, mode="TF", min_gram_length=1, max_gram_length=2,
                max_skip_count=1, ngram_counts=[0, 2], ngram_indexes=[0, 1, 2], pool_strings=["a", "c", "a", "b"])
