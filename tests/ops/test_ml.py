"""Classic-ML kernels (tuili.ops.ml) against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tests.ops._ortref import assert_same, run_ort, run_tuili
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


def _random_regressor(rng, n_trees, n_features, n_targets, all_targets=False):
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_modes", "nodes_featureids", "nodes_values",
                         "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                         "target_treeids", "target_nodeids", "target_ids", "target_weights")}

    def build(tree, depth, counter):
        nid = counter[0]
        counter[0] += 1
        k = len(a["nodes_nodeids"])
        leafy = depth == 0 or (depth < 3 and rng.random() < 0.3)
        for key, val in (("nodes_treeids", tree), ("nodes_nodeids", nid), ("nodes_featureids", int(rng.integers(0, n_features))),
                         ("nodes_values", float(rng.integers(-2, 3))), ("nodes_truenodeids", 0), ("nodes_falsenodeids", 0),
                         ("nodes_missing_value_tracks_true", int(rng.integers(0, 2)))):
            a[key].append(val)
        if leafy:
            a["nodes_modes"].append("LEAF")
            picked = n_targets if all_targets else int(rng.integers(1, n_targets + 1))
            for tg in rng.choice(n_targets, picked, replace=False):
                a["target_treeids"].append(tree)
                a["target_nodeids"].append(nid)
                a["target_ids"].append(int(tg))
                a["target_weights"].append(float(rng.integers(-5, 6)))
            return nid
        a["nodes_modes"].append(str(rng.choice(["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"])))
        a["nodes_truenodeids"][k] = build(tree, depth - 1, counter)
        a["nodes_falsenodeids"][k] = build(tree, depth - 1, counter)
        return nid

    for t in range(n_trees):
        build(t, 3, [0])
    return a


@SETTINGS
@given(seed=st.integers(0, 10_000), n_trees=st.integers(1, 3),
       agg=st.sampled_from(["SUM", "AVERAGE", "MIN", "MAX"]), post=st.sampled_from(["NONE", "LOGISTIC"]),
       n_targets=st.integers(1, 2))
def test_tree_ensemble_regressor(seed, n_trees, agg, post, n_targets):
    rng = np.random.default_rng(seed)
    attrs = _random_regressor(rng, n_trees, 3, n_targets)
    x = rng.integers(-3, 4, (6, 3)).astype(np.float32)
    x[0, 0] = np.nan
    if n_targets == 1:
        post = "NONE"  # onnxruntime ignores LOGISTIC/SOFTMAX for a single target; tuili applies it (spec)
    assert_same("TreeEnsembleRegressor", [x], opset=3, domain=ML, n_targets=n_targets, aggregate_function=agg,
                post_transform=post, base_values=[0.5, -1.0][:n_targets], rtol=1e-5, atol=1e-6, **attrs)


@SETTINGS
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["MAX", "L1", "L2"]), targets=st.integers(1, 3))
def test_scaler_normalizer_linear_regressor(seed, norm, targets):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    x[1] = 0
    assert_same("Scaler", [x], opset=1, domain=ML, offset=[0.5, -1.0, 2.0], scale=[2.0, 0.5, 1.0], rtol=1e-6)
    if norm == "MAX":  # onnxruntime divides by the signed row max; the ONNX reference (and tuili) by max |x|
        (got,) = run_tuili("Normalizer", [x], opset=1, domain=ML, norm=norm)
        d = np.abs(x).max(axis=1, keepdims=True)
        np.testing.assert_allclose(got, np.where(d == 0, x, x / np.where(d == 0, 1, d)), rtol=1e-6)
    else:
        assert_same("Normalizer", [x], opset=1, domain=ML, norm=norm, rtol=1e-6)
    coef = rng.standard_normal(3 * targets).tolist()
    assert_same("LinearRegressor", [x], opset=1, domain=ML, coefficients=coef, intercepts=[0.25] * targets,
                targets=targets, rtol=1e-5, atol=1e-6)


def test_imputer_category_mapper_feature_vectorizer_one_hot_encoder():
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, 0.0]], np.float32)
    assert_same("Imputer", [x], opset=1, domain=ML, imputed_value_floats=[9.0, 8.0, 7.0], replaced_value_float=np.nan)
    assert_same("Imputer", [x], opset=1, domain=ML, imputed_value_floats=[4.0], replaced_value_float=0.0)
    assert_same("Imputer", [np.array([[1, 0, 3]], np.int64)], opset=1, domain=ML, imputed_value_int64s=[5],
                replaced_value_int64=0)
    cats = dict(cats_int64s=[1, 2, 3], cats_strings=["a", "b", "c"])
    assert_same("CategoryMapper", [strs(["a", "z", "c"], (1, 3))], opset=1, domain=ML, default_int64=-9, **cats)
    assert_same("CategoryMapper", [np.array([3, 7, 1], np.int64)], opset=1, domain=ML, default_string="?", **cats)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([[1.0], [2.0]], np.float32)
    assert_same("FeatureVectorizer", [a, b], opset=1, domain=ML, inputdimensions=[2, 3])
    assert_same("OneHotEncoder", [np.array([[1, 5, 3]], np.int64)], opset=1, domain=ML, cats_int64s=[3, 1, 4])
    assert_same("OneHotEncoder", [strs(["b", "a"])], opset=1, domain=ML, cats_strings=["a", "b"])
    with pytest.raises(KernelError, match="zeros=0"):
        run_tuili("OneHotEncoder", [np.array([5], np.int64)], opset=1, domain=ML, cats_int64s=[3], zeros=0)


@SETTINGS
@given(seed=st.integers(0, 10_000), n_classes=st.sampled_from([1, 3]), post=st.sampled_from(["NONE", "LOGISTIC", "SOFTMAX"]),
       string_labels=st.booleans())
def test_linear_classifier(seed, n_classes, post, string_labels):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    n_labels = 2 if n_classes == 1 else n_classes
    labels = {"classlabels_strings": [f"c{i}" for i in range(n_labels)]} if string_labels else {
        "classlabels_ints": list(range(10, 10 + n_labels))}
    if n_classes == 1 and post == "SOFTMAX":
        post = "NONE"
    assert_same("LinearClassifier", [x], n_outputs=2, opset=1, domain=ML, post_transform=post,
                coefficients=rng.standard_normal(4 * n_classes).tolist(), intercepts=rng.standard_normal(n_classes).tolist(),
                rtol=1e-5, atol=1e-6, **labels)


@SETTINGS
@given(seed=st.integers(0, 10_000), n_trees=st.integers(1, 3), post=st.sampled_from(["NONE", "LOGISTIC", "SOFTMAX"]),
       string_labels=st.booleans())
def test_tree_ensemble_classifier_multiclass(seed, n_trees, post, string_labels):
    # Multi-class forests whose leaves weight every class, with tie-free weights: here
    # onnxruntime and the spec agree. (onnxruntime special-cases 2-class forests: it returns
    # 0/1 instead of the labels, and [0, s] score columns; tuili does not copy that.)
    rng = np.random.default_rng(seed)
    a = _random_regressor(rng, n_trees, 3, 3, all_targets=True)
    attrs = {k.replace("target_", "class_"): v for k, v in a.items()}
    attrs["class_weights"] = rng.uniform(0, 1, len(attrs["class_weights"])).tolist()
    labels = {"classlabels_strings": ["a", "b", "c"]} if string_labels else {"classlabels_int64s": [5, 6, 7]}
    x = rng.integers(-3, 4, (6, 3)).astype(np.float32)
    assert_same("TreeEnsembleClassifier", [x], n_outputs=2, opset=3, domain=ML, post_transform=post,
                base_values=[0.1, 0.0, -0.1], rtol=1e-5, atol=1e-6, **labels, **attrs)


def test_tree_ensemble_classifier_binary_one_class():
    # One tree, one split, scoring class 1 only: labels follow s > 0.5 (all weights >= 0).
    attrs = dict(nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
                 nodes_featureids=[0, 0, 0], nodes_values=[0.0, 0.0, 0.0], nodes_truenodeids=[1, 0, 0],
                 nodes_falsenodeids=[2, 0, 0], class_treeids=[0, 0], class_nodeids=[1, 2], class_ids=[1, 1],
                 class_weights=[0.2, 0.9], classlabels_strings=["no", "yes"])
    y, z = run_tuili("TreeEnsembleClassifier", [np.array([[-1.0], [1.0]], np.float32)], n_outputs=2, opset=3,
                     domain=ML, **attrs)
    assert y.tolist() == ["no", "yes"]
    np.testing.assert_allclose(z, [[0.8, 0.2], [0.1, 0.9]], rtol=1e-6)


def test_zip_map_against_ort():
    x = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    for labels in ({"classlabels_strings": ["n", "y"]}, {"classlabels_int64s": [3, 8]}):
        want = run_ort("ZipMap", [x], opset=1, domain=ML, **labels)[0]
        got = run_tuili("ZipMap", [x], opset=1, domain=ML, **labels)[0]
        assert got == [{k: pytest.approx(v) for k, v in d.items()} for d in want]


def test_dict_vectorizer_and_cast_map():
    (out,) = run_tuili("DictVectorizer", [{"b": 2.0, "z": 5.0}], opset=1, domain=ML, string_vocabulary=["a", "b"])
    assert out.tolist() == [[0.0, 2.0]]
    (out,) = run_tuili("CastMap", [{3: "1.5", 1: "2"}], opset=1, domain=ML)
    assert out.dtype == np.float32 and out.tolist() == [[2.0, 1.5]]
    (out,) = run_tuili("CastMap", [{3: 1.5, 1: 2.0}], opset=1, domain=ML, cast_to="TO_INT64", map_form="SPARSE",
                       max_map=5)
    assert out.tolist() == [[0, 2, 0, 1, 0]]


@SETTINGS
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["LINEAR", "POLY", "RBF", "SIGMOID"]), one_class=st.integers(0, 1),
       n_sv=st.integers(0, 4))
def test_svm_regressor(seed, kind, one_class, n_sv):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    attrs = dict(kernel_type=kind, kernel_params=[0.3, 0.5, 2.0], rho=[0.25], one_class=one_class, n_supports=n_sv,
                 coefficients=rng.standard_normal(max(n_sv, 3)).tolist())
    if n_sv:
        attrs["support_vectors"] = rng.standard_normal(3 * n_sv).tolist()
    elif kind != "LINEAR":
        return
    assert_same("SVMRegressor", [x], opset=1, domain=ML, rtol=1e-4, atol=1e-5, **attrs)
