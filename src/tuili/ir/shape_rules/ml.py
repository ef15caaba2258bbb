"""ai.onnx.ml ops (the classic scikit-learn converters' vocabulary)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from .registry import INT64, TensorType, dim_prod, shape_rule

ML = "ai.onnx.ml"
FLOAT = TensorProto.FLOAT


def _batch(ctx):
    s = ctx.shape(0)
    if s is None:
        return None
    return s[0] if len(s) == 2 else 1 if len(s) == 1 else None


def _labels_type(ctx):
    return TensorProto.STRING if ctx.attr("classlabels_strings") else INT64


def _n_classes(ctx):
    labels = ctx.attr("classlabels_strings") or ctx.attr("classlabels_ints") or ctx.attr("classlabels_int64s")
    return len(labels) if labels else None


@shape_rule("ArrayFeatureExtractor", domain=ML)
def _array_feature_extractor(ctx):
    x, idx = ctx.shape(0), ctx.shape(1)
    if x is None or idx is None:
        return [TensorType(ctx.dtype(0), None)]
    n = dim_prod(idx)
    return [TensorType(ctx.dtype(0), (1, n) if len(x) == 1 else tuple(x[:-1]) + (n,))]


@shape_rule("Binarizer", "Normalizer", domain=ML)
def _same(ctx):
    dtype = ctx.dtype(0) if ctx.op_type == "Binarizer" else FLOAT
    return [TensorType(dtype, ctx.shape(0))]


@shape_rule("Scaler", "Imputer", domain=ML)
def _float_same(ctx):
    dtype = FLOAT if ctx.op_type == "Scaler" else ctx.dtype(0)
    return [TensorType(dtype, ctx.shape(0))]


@shape_rule("LabelEncoder", domain=ML)
def _label_encoder(ctx):
    a = ctx.attrs
    if "values_tensor" in a:
        arr = np.asarray(a["values_tensor"])
        from onnx.helper import np_dtype_to_tensor_dtype

        dtype = TensorProto.STRING if arr.dtype == object else np_dtype_to_tensor_dtype(arr.dtype)
    elif "values_strings" in a:
        dtype = TensorProto.STRING
    elif "values_int64s" in a:
        dtype = INT64
    elif "values_floats" in a:
        dtype = FLOAT
    else:
        dtype = None
    return [TensorType(dtype, ctx.shape(0))]


@shape_rule("CategoryMapper", domain=ML)
def _category_mapper(ctx):
    dtype = INT64 if ctx.dtype(0) == TensorProto.STRING else TensorProto.STRING
    return [TensorType(dtype, ctx.shape(0))]


@shape_rule("TreeEnsemble", domain=ML)
def _tree_ensemble(ctx):
    return [TensorType(ctx.dtype(0), (_batch(ctx), ctx.attr("n_targets")))]


@shape_rule("TreeEnsembleRegressor", domain=ML)
def _tree_regressor(ctx):
    return [TensorType(FLOAT, (_batch(ctx), ctx.attr("n_targets", 1)))]


@shape_rule("LinearRegressor", domain=ML)
def _linear_regressor(ctx):
    return [TensorType(FLOAT, (_batch(ctx), ctx.attr("targets", 1)))]


@shape_rule("SVMRegressor", domain=ML)
def _svm_regressor(ctx):
    return [TensorType(FLOAT, (_batch(ctx), 1))]


@shape_rule("LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier", domain=ML)
def _classifier(ctx):
    n = _batch(ctx)
    # a binary linear/SVM model may emit one score column or two: only trees are definite
    e = _n_classes(ctx) if ctx.op_type == "TreeEnsembleClassifier" else None
    outs = [TensorType(_labels_type(ctx), (n,)), TensorType(FLOAT, (n, e))]
    return outs[: ctx.num_outputs]


@shape_rule("OneHotEncoder", domain=ML)
def _one_hot_encoder(ctx):
    s = ctx.shape(0)
    cats = ctx.attr("cats_strings") or ctx.attr("cats_int64s") or []
    return [TensorType(FLOAT, None if s is None else tuple(s) + (len(cats),))]


@shape_rule("FeatureVectorizer", domain=ML)
def _feature_vectorizer(ctx):
    dims = ctx.attr("inputdimensions") or []
    return [TensorType(FLOAT, (_batch(ctx), sum(dims) if dims else None))]
