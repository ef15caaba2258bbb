"""Classic-ML kernels: ai.onnx.ml LabelEncoder, ArrayFeatureExtractor, Binarizer,
TreeEnsemble, and the default-domain TfIdfVectorizer. Outputs are fresh arrays.
"""
from __future__ import annotations

import math

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import ONNX_ML_DOMAIN, register

# ---------------------------------------------------------------- LabelEncoder


def _str_array(items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = [s.decode("utf-8") if isinstance(s, bytes) else s for s in items]
    return out


def _as_keys(v) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype == object or a.dtype.kind in "SU":
        return _str_array(list(a.reshape(-1)))
    return a.reshape(-1)


def _encode(x: np.ndarray, keys: np.ndarray, values: np.ndarray, default) -> np.ndarray:
    if keys.size != values.size:
        raise KernelError(f"LabelEncoder: {keys.size} keys but {values.size} values; give one value per key")
    flat = np.asarray(x).reshape(-1)
    out = np.empty(flat.size, dtype=values.dtype)
    out[:] = default
    if keys.dtype == object or flat.dtype == object:
        table = dict(zip(keys.tolist(), range(keys.size)))
        pos = np.array([table.get(s.decode("utf-8") if isinstance(s, bytes) else s, -1) for s in flat], dtype=np.int64)
    else:
        k = keys.astype(np.float64) if keys.dtype.kind == "f" or flat.dtype.kind == "f" else keys.astype(np.int64)
        xv = flat.astype(k.dtype)
        order = np.argsort(k, kind="stable")
        sk = k[order]
        i = np.searchsorted(sk, xv)
        i_c = np.minimum(i, max(sk.size - 1, 0))
        hit = (i < sk.size) & (sk[i_c] == xv) if sk.size else np.zeros(xv.shape, bool)
        pos = np.where(hit, order[i_c] if sk.size else 0, -1)
        if k.dtype.kind == "f":  # a NaN key matches NaN inputs
            nan_keys = np.flatnonzero(np.isnan(k))
            if nan_keys.size:
                pos = np.where(np.isnan(xv), nan_keys[0], pos)
    found = pos >= 0
    out[found] = values[pos[found]]
    return out.reshape(np.asarray(x).shape)


@register("LabelEncoder", domain=ONNX_ML_DOMAIN, since=1)
def label_encoder_v1(x, *, classes_strings=None, default_int64=-1, default_string="_Unused"):
    classes = _str_array(classes_strings or [])
    x = np.asarray(x)
    if x.dtype == object or x.dtype.kind in "SU":  # string -> index
        return _encode(x, classes, np.arange(classes.size, dtype=np.int64), default_int64)
    idx = x.astype(np.int64).reshape(-1)
    ok = (idx >= 0) & (idx < classes.size)
    out = np.empty(idx.size, dtype=object)
    out[:] = default_string
    out[ok] = classes[idx[ok]]
    return out.reshape(x.shape)


_DEFAULTS = {"f": -0.0, "i": -1, "u": -1, "b": False, "O": "_Unused"}


@register("LabelEncoder", domain=ONNX_ML_DOMAIN, since=2)
def label_encoder(
    x,
    *,
    default_float=-0.0,
    default_int64=-1,
    default_string="_Unused",
    default_tensor=None,
    keys_floats=None,
    keys_int64s=None,
    keys_strings=None,
    keys_tensor=None,
    values_floats=None,
    values_int64s=None,
    values_strings=None,
    values_tensor=None,
):
    if keys_tensor is not None:
        keys = _as_keys(keys_tensor)
    elif keys_strings is not None:
        keys = _str_array(keys_strings)
    elif keys_int64s is not None:
        keys = np.array(keys_int64s, dtype=np.int64)
    elif keys_floats is not None:
        keys = np.array(keys_floats, dtype=np.float32)
    else:
        raise KernelError("LabelEncoder: one of keys_tensor, keys_strings, keys_int64s, keys_floats is required")
    if values_tensor is not None:
        values = _as_keys(values_tensor)
        if default_tensor is not None:
            default = _as_keys(default_tensor)[0]
        else:
            default = _DEFAULTS.get(values.dtype.kind, 0)
    elif values_strings is not None:
        values, default = _str_array(values_strings), default_string
    elif values_int64s is not None:
        values, default = np.array(values_int64s, dtype=np.int64), default_int64
    elif values_floats is not None:
        values, default = np.array(values_floats, dtype=np.float32), default_float
    else:
        raise KernelError("LabelEncoder: one of values_tensor, values_strings, values_int64s, values_floats is required")
    return _encode(x, keys, values, default)


# ---------------------------------------------------------------- ArrayFeatureExtractor / Binarizer


@register("ArrayFeatureExtractor", domain=ONNX_ML_DOMAIN, since=1)
def array_feature_extractor(x, y):
    idx = np.asarray(y, dtype=np.int64).reshape(-1)
    last = x.shape[-1]
    if idx.size and (idx.min() < 0 or idx.max() >= last):
        raise KernelError(f"ArrayFeatureExtractor: indices {idx.tolist()} out of range for last dim {last}")
    out = np.take(x, idx, axis=-1)
    return out.reshape(1, -1) if x.ndim == 1 else out


@register("Binarizer", domain=ONNX_ML_DOMAIN, since=1)
def binarizer(x, *, threshold=0.0):
    return (x > threshold).astype(x.dtype)


# ---------------------------------------------------------------- TreeEnsemble

_LEQ, _LT, _GTE, _GT, _EQ, _NEQ, _MEMBER = range(7)


def _post_transform(scores: np.ndarray, mode: int) -> np.ndarray:
    if mode == 0:
        return scores
    if mode == 1:  # softmax
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if mode == 2:  # logistic
        return 1.0 / (1.0 + np.exp(-scores))
    if mode == 3:  # softmax_zero: zeros stay zero
        nz = scores != 0
        m = np.where(nz, scores, -np.inf).max(axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        e = np.where(nz, np.exp(scores - m), 0)
        s = e.sum(axis=1, keepdims=True)
        return np.where(s > 0, e / np.where(s > 0, s, 1), 0)
    if mode == 4:  # probit
        from scipy.special import erfinv

        return math.sqrt(2.0) * erfinv(2.0 * scores - 1.0)
    raise KernelError(f"TreeEnsemble: unknown post_transform {mode}; use 0..4")


@register("TreeEnsemble", domain=ONNX_ML_DOMAIN, since=5)
def tree_ensemble(
    x,
    *,
    aggregate_function=1,
    leaf_targetids=None,
    leaf_weights=None,
    membership_values=None,
    n_targets=None,
    nodes_falseleafs=None,
    nodes_falsenodeids=None,
    nodes_featureids=None,
    nodes_hitrates=None,
    nodes_missing_value_tracks_true=None,
    nodes_modes=None,
    nodes_splits=None,
    nodes_trueleafs=None,
    nodes_truenodeids=None,
    post_transform=0,
    tree_roots=None,
):
    required = dict(
        leaf_targetids=leaf_targetids, leaf_weights=leaf_weights, n_targets=n_targets,
        nodes_falseleafs=nodes_falseleafs, nodes_falsenodeids=nodes_falsenodeids,
        nodes_featureids=nodes_featureids, nodes_modes=nodes_modes, nodes_splits=nodes_splits,
        nodes_trueleafs=nodes_trueleafs, nodes_truenodeids=nodes_truenodeids, tree_roots=tree_roots,
    )  # fmt: skip
    missing = [k for k, v in required.items() if v is None]
    if missing:
        raise KernelError(f"TreeEnsemble: required attributes missing: {missing}")
    x = np.asarray(x)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    n = x.shape[0]
    modes = np.asarray(nodes_modes).astype(np.int64).reshape(-1)
    feat = np.asarray(nodes_featureids, dtype=np.int64)
    splits = np.asarray(nodes_splits).reshape(-1)
    t_ids, f_ids = np.asarray(nodes_truenodeids, dtype=np.int64), np.asarray(nodes_falsenodeids, dtype=np.int64)
    t_leaf, f_leaf = np.asarray(nodes_trueleafs, dtype=bool), np.asarray(nodes_falseleafs, dtype=bool)
    miss = (
        np.zeros(modes.size, bool)
        if nodes_missing_value_tracks_true is None
        else np.asarray(nodes_missing_value_tracks_true, dtype=bool)
    )
    weights = np.asarray(leaf_weights).reshape(-1)
    targets = np.asarray(leaf_targetids, dtype=np.int64)
    # Membership sets, in the order BRANCH_MEMBER nodes appear, NaN-delimited.
    sets: dict[int, np.ndarray] = {}
    member_nodes = np.flatnonzero(modes == _MEMBER)
    if member_nodes.size:
        mv = np.asarray(membership_values, dtype=np.float64).reshape(-1) if membership_values is not None else None
        if mv is None:
            raise KernelError("TreeEnsemble: BRANCH_MEMBER nodes need the membership_values attribute")
        groups, cur = [], []
        for v in mv:
            if np.isnan(v):
                groups.append(np.array(cur))
                cur = []
            else:
                cur.append(v)
        if cur:
            groups.append(np.array(cur))
        if len(groups) < member_nodes.size:
            raise KernelError(
                f"TreeEnsemble: {member_nodes.size} BRANCH_MEMBER nodes but {len(groups)} membership sets"
            )
        sets = {int(nd): groups[i] for i, nd in enumerate(member_nodes)}

    roots = np.asarray(tree_roots, dtype=np.int64)
    n_trees = roots.size
    # Walk every (row, tree) pair down together, one level per iteration.
    node = np.broadcast_to(roots, (n, n_trees)).copy()
    leaf = np.full((n, n_trees), -1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, n_trees))
    active = np.ones((n, n_trees), dtype=bool)
    for _ in range(modes.size + 1):
        if not active.any():
            break
        r, t = np.nonzero(active)
        nd = node[r, t]
        v = x[rows[r, t], feat[nd]].astype(np.float64)
        s = splits[nd].astype(np.float64)
        m = modes[nd]
        cond = np.select(
            [m == _LEQ, m == _LT, m == _GTE, m == _GT, m == _EQ, m == _NEQ],
            [v <= s, v < s, v >= s, v > s, v == s, v != s],
            default=False,
        )
        for mn in np.unique(nd[m == _MEMBER]):
            sel = nd == mn
            cond[sel] = np.isin(v[sel], sets[int(mn)])
        nan = np.isnan(v)
        cond = np.where(nan, miss[nd], cond)
        nxt = np.where(cond, t_ids[nd], f_ids[nd])
        is_leaf = np.where(cond, t_leaf[nd], f_leaf[nd])
        leaf[r[is_leaf], t[is_leaf]] = nxt[is_leaf]
        active[r[is_leaf], t[is_leaf]] = False
        node[r[~is_leaf], t[~is_leaf]] = nxt[~is_leaf]
    if active.any():
        raise KernelError("TreeEnsemble: a tree does not terminate (cycle in nodes_*nodeids)")

    out_dtype = x.dtype if x.dtype.kind == "f" else np.float32
    w = weights[leaf].astype(np.float64)  # (n, trees)
    tg = targets[leaf]
    scores = np.zeros((n, int(n_targets)), dtype=np.float64)
    rr = np.broadcast_to(np.arange(n)[:, None], tg.shape)
    if aggregate_function in (0, 1):
        np.add.at(scores, (rr, tg), w)
        if aggregate_function == 0:
            scores /= max(n_trees, 1)
    elif aggregate_function in (2, 3):
        init = np.inf if aggregate_function == 2 else -np.inf
        scores[:] = init
        (np.minimum if aggregate_function == 2 else np.maximum).at(scores, (rr, tg), w)
        scores[scores == init] = 0.0
    else:
        raise KernelError(f"TreeEnsemble: unknown aggregate_function {aggregate_function}; use 0..3")
    return _post_transform(scores, post_transform).astype(out_dtype)


# ---------------------------------------------------------------- TfIdfVectorizer


@register("TfIdfVectorizer", since=9)
def tfidf_vectorizer(
    x,
    *,
    max_gram_length,
    max_skip_count,
    min_gram_length,
    mode,
    ngram_counts,
    ngram_indexes,
    pool_int64s=None,
    pool_strings=None,
    weights=None,
):
    if (pool_int64s is None) == (pool_strings is None):
        raise KernelError("TfIdfVectorizer: set exactly one of pool_int64s and pool_strings")
    if mode not in ("TF", "IDF", "TFIDF"):
        raise KernelError(f"TfIdfVectorizer: unknown mode {mode!r}; use TF, IDF or TFIDF")
    pool = list(pool_int64s) if pool_int64s is not None else list(pool_strings)
    counts = list(ngram_counts)
    ngram_indexes = np.asarray(ngram_indexes, dtype=np.int64)
    # pool n-gram -> position in the list of all pool n-grams (ngram_indexes maps it to the output)
    table: dict[tuple, int] = {}
    k = 0
    for i, start in enumerate(counts):
        n = i + 1
        end = counts[i + 1] if i + 1 < len(counts) else len(pool)
        for p in range(start, end, n):
            table[tuple(pool[p : p + n])] = k
            k += 1
    width = int(ngram_indexes.max()) + 1 if ngram_indexes.size else 0
    x = np.asarray(x)
    rows = x.reshape(1, -1) if x.ndim <= 1 else x
    if rows.ndim != 2:
        raise KernelError(f"TfIdfVectorizer: input must be 1-D or 2-D, got shape {x.shape}")
    vals = rows.tolist()
    out = np.zeros((rows.shape[0], width), dtype=np.float32)
    for r, row in enumerate(vals):
        L = len(row)
        for n in range(max(min_gram_length, 1), max_gram_length + 1):
            for skip in range(max_skip_count + 1 if n > 1 else 1):
                step = skip + 1
                span = (n - 1) * step
                for i in range(L - span):
                    key = tuple(row[i : i + span + 1 : step])
                    j = table.get(key)
                    if j is not None:
                        out[r, ngram_indexes[j]] += 1.0
    if mode != "TF":
        w = np.ones(width, dtype=np.float32)
        if weights:
            w = np.zeros(width, dtype=np.float32)
            w[ngram_indexes[: len(weights)]] = np.asarray(weights, dtype=np.float32)
        if mode == "IDF":
            out = np.minimum(out, 1.0)
        out = out * w
    return out.reshape(width) if x.ndim <= 1 else out
