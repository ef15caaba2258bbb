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


def _walk(x, roots, root_is_leaf, modes, feat, splits, t_ids, f_ids, t_leaf, f_leaf, miss, sets) -> np.ndarray:
    """Leaf index reached by every (row, tree): all pairs walk down together, one level per step.

    Branch ``i`` compares ``x[:, feat[i]]`` with ``splits[i]`` by ``modes[i]``; its true child
    is leaf ``t_ids[i]`` if ``t_leaf[i]`` else branch ``t_ids[i]`` (likewise for false). A NaN
    feature takes the true branch where ``miss[i]``, else the comparison decides (NaN != t is
    true), as in the ONNX reference and onnxruntime.
    """
    n, n_trees = x.shape[0], roots.size
    node = np.broadcast_to(roots, (n, n_trees)).copy()
    leaf = np.where(root_is_leaf, roots, -1)[None, :].repeat(n, axis=0)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, n_trees))
    active = np.broadcast_to(~np.asarray(root_is_leaf, bool), (n, n_trees)).copy()
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
        cond = cond | (np.isnan(v) & miss[nd])
        nxt = np.where(cond, t_ids[nd], f_ids[nd])
        is_leaf = np.where(cond, t_leaf[nd], f_leaf[nd])
        leaf[r[is_leaf], t[is_leaf]] = nxt[is_leaf]
        active[r[is_leaf], t[is_leaf]] = False
        node[r[~is_leaf], t[~is_leaf]] = nxt[~is_leaf]
    if active.any():
        raise KernelError("TreeEnsemble: a tree does not terminate (cycle in the node ids)")
    return leaf


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
    leaf = _walk(x, roots, np.zeros(n_trees, bool), modes, feat, splits, t_ids, f_ids, t_leaf, f_leaf, miss, sets)

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


# ---------------------------------------------------------------- TreeEnsembleRegressor (ml opset 1, 3)

_MODE_NAMES = {"BRANCH_LEQ": _LEQ, "BRANCH_LT": _LT, "BRANCH_GTE": _GTE, "BRANCH_GT": _GT,
               "BRANCH_EQ": _EQ, "BRANCH_NEQ": _NEQ, "LEAF": -1}  # fmt: skip
_POST_NAMES = {"NONE": 0, "SOFTMAX": 1, "LOGISTIC": 2, "SOFTMAX_ZERO": 3, "PROBIT": 4}
_AGG_NAMES = {"AVERAGE": 0, "SUM": 1, "MIN": 2, "MAX": 3}


def _first(*vals):
    for v in vals:
        if v is not None:
            return np.asarray(v).reshape(-1)
    return None


# The nodes_* attributes the pre-opset-5 TreeEnsembleRegressor and TreeEnsembleClassifier share
# (all optional; the hit rates are accepted and, as in onnxruntime, unused).
_LEGACY_NODE_ATTRS = frozenset({
    "nodes_falsenodeids", "nodes_featureids", "nodes_hitrates", "nodes_hitrates_as_tensor",
    "nodes_missing_value_tracks_true", "nodes_modes", "nodes_nodeids", "nodes_treeids",
    "nodes_truenodeids", "nodes_values", "nodes_values_as_tensor",
})  # fmt: skip


def _legacy_forest(op, x, n_t, nodes, target_treeids, target_nodeids, target_ids, target_weights):
    """Walk a pre-opset-5 forest (nodes keyed by (tree id, node id), LEAF nodes carry weights).

    ``nodes`` holds the kernel's nodes_* attributes (names outside _LEGACY_NODE_ATTRS are an error).
    Returns (weights, has) of shape (rows, trees, n_t): each tree's leaf weight per target
    for every row, and whether that leaf names the target at all.
    """
    unknown = sorted(set(nodes) - _LEGACY_NODE_ATTRS)
    if unknown:
        raise KernelError(f"{op}: unknown attribute(s) {', '.join(unknown)}; expected only ONNX's {op} attributes")
    get = nodes.get
    nodes_treeids, nodes_nodeids, nodes_modes = get("nodes_treeids"), get("nodes_nodeids"), get("nodes_modes")
    nodes_truenodeids, nodes_falsenodeids = get("nodes_truenodeids"), get("nodes_falsenodeids")
    nodes_featureids, nodes_missing_value_tracks_true = get("nodes_featureids"), get("nodes_missing_value_tracks_true")
    nodes_values = _first(get("nodes_values_as_tensor"), get("nodes_values"))
    if nodes_modes is None or nodes_treeids is None or nodes_nodeids is None:
        raise KernelError(f"{op}: nodes_modes, nodes_treeids and nodes_nodeids are required")
    x = np.asarray(x)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    trees = np.asarray(nodes_treeids, dtype=np.int64)
    ids = np.asarray(nodes_nodeids, dtype=np.int64)
    count = trees.size
    try:
        modes = np.array([_MODE_NAMES[m] for m in nodes_modes], dtype=np.int64)
    except KeyError as e:
        raise KernelError(f"{op}: unknown node mode {e.args[0]!r}") from None
    pos = {(int(t), int(i)): k for k, (t, i) in enumerate(zip(trees, ids))}
    is_leaf = modes < 0
    leaf_no = np.cumsum(is_leaf) - 1  # leaf number of every LEAF node
    zeros = np.zeros(count, np.int64)
    t_nodes = np.asarray(nodes_truenodeids if nodes_truenodeids is not None else zeros, dtype=np.int64)
    f_nodes = np.asarray(nodes_falsenodeids if nodes_falsenodeids is not None else zeros, dtype=np.int64)

    def child(k, target):
        if is_leaf[k]:
            return 0, False
        g = pos.get((int(trees[k]), int(target)))
        if g is None:
            raise KernelError(f"{op}: node ({trees[k]}, {ids[k]}) points to missing node id {target}")
        return (int(leaf_no[g]), True) if is_leaf[g] else (g, False)

    tc = [child(k, t_nodes[k]) for k in range(count)]
    fc = [child(k, f_nodes[k]) for k in range(count)]
    t_ids = np.array([c[0] for c in tc], np.int64)
    t_leaf = np.array([c[1] for c in tc], bool)
    f_ids = np.array([c[0] for c in fc], np.int64)
    f_leaf = np.array([c[1] for c in fc], bool)
    tree_order = list(dict.fromkeys(trees.tolist()))
    referenced = {(int(trees[k]), int(v)) for k in range(count) if not is_leaf[k] for v in (t_nodes[k], f_nodes[k])}
    roots, root_is_leaf = [], []
    for tr in tree_order:
        members = [k for k in range(count) if trees[k] == tr]
        root = next((k for k in members if (tr, int(ids[k])) not in referenced), members[0])
        roots.append(int(leaf_no[root]) if is_leaf[root] else root)
        root_is_leaf.append(bool(is_leaf[root]))
    splits = nodes_values
    splits = np.zeros(count) if splits is None else splits
    miss = (
        np.zeros(count, bool)
        if nodes_missing_value_tracks_true is None
        else np.asarray(nodes_missing_value_tracks_true, dtype=bool)
    )
    feat = np.asarray(nodes_featureids if nodes_featureids is not None else zeros, dtype=np.int64)
    leaf = _walk(x, np.array(roots, np.int64), np.array(root_is_leaf), modes, feat, splits,
                 t_ids, f_ids, t_leaf, f_leaf, miss, {})  # fmt: skip

    # Leaf -> per-target weight (a leaf may feed several targets).
    n_leaves = int(is_leaf.sum())
    W = np.zeros((n_leaves, n_t))
    has = np.zeros((n_leaves, n_t), bool)
    if target_treeids is not None and len(target_treeids):
        for tr, nd, tg, w in zip(target_treeids, target_nodeids, target_ids, target_weights):
            g = pos.get((int(tr), int(nd)))
            if g is None or not is_leaf[g]:
                raise KernelError(f"{op}: target weight for ({tr}, {nd}) does not name a LEAF node")
            if not 0 <= int(tg) < n_t:
                raise KernelError(f"{op}: target/class id {tg} out of range [0, {n_t})")
            W[leaf_no[g], int(tg)] += float(w)
            has[leaf_no[g], int(tg)] = True
    return W[leaf], has[leaf]


@register("TreeEnsembleRegressor", domain=ONNX_ML_DOMAIN, since=1)
def tree_ensemble_regressor(
    x,
    *,
    aggregate_function="SUM",
    base_values=None,
    base_values_as_tensor=None,
    n_targets=None,
    post_transform="NONE",
    target_ids=None,
    target_nodeids=None,
    target_treeids=None,
    target_weights=None,
    target_weights_as_tensor=None,
    **nodes,
):
    """The pre-opset-5 regressor: nodes keyed by (tree id, node id), leaves are LEAF nodes.
    ``nodes``: the nodes_* attributes (see _LEGACY_NODE_ATTRS)."""
    op = "TreeEnsembleRegressor"
    if n_targets is None:
        raise KernelError(f"{op}: the n_targets attribute is required")
    if aggregate_function not in _AGG_NAMES or post_transform not in _POST_NAMES:
        raise KernelError(f"{op}: unknown aggregate_function {aggregate_function!r} or post_transform {post_transform!r}")
    n_t = int(n_targets)
    per_tree, has_t = _legacy_forest(op, x, n_t, nodes, target_treeids, target_nodeids, target_ids,
                                     _first(target_weights_as_tensor, target_weights))  # fmt: skip
    n_trees = per_tree.shape[1]
    agg = _AGG_NAMES[aggregate_function]
    if agg in (0, 1):
        scores = per_tree.sum(axis=1)
        if agg == 0:
            scores /= max(n_trees, 1)
    else:
        mask = has_t
        fill = np.inf if agg == 2 else -np.inf
        red = np.where(mask, per_tree, fill)
        scores = red.min(axis=1) if agg == 2 else red.max(axis=1)
        scores = np.where(mask.any(axis=1), scores, 0.0)
    base = _first(base_values_as_tensor, base_values)
    if base is not None and base.size:
        scores = scores + base.astype(np.float64)
    if n_t > 1:
        # With several targets, one that no reached leaf scores stays 0, base value included
        # (onnxruntime's behaviour; the ONNX reference gives base, or +-FLT_MAX for MIN/MAX).
        scores = np.where(has_t.any(axis=1), scores, 0.0)
    return _post_transform(scores, _POST_NAMES[post_transform]).astype(np.float32)


# ---------------------------------------------------------------- Scaler / Normalizer / LinearRegressor


@register("Scaler", domain=ONNX_ML_DOMAIN, since=1)
def scaler(x, *, offset=None, scale=None):
    off = np.asarray(offset if offset is not None else [0.0], dtype=np.float32)
    sc = np.asarray(scale if scale is not None else [1.0], dtype=np.float32)
    return ((np.asarray(x, dtype=np.float32) - off) * sc).astype(np.float32)


@register("Normalizer", domain=ONNX_ML_DOMAIN, since=1)
def normalizer(x, *, norm="MAX"):
    x = np.asarray(x, dtype=np.float32)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    if norm == "MAX":
        d = np.abs(x2).max(axis=1, keepdims=True) if x2.shape[1] else np.ones((x2.shape[0], 1), np.float32)
    elif norm == "L1":
        d = np.abs(x2).sum(axis=1, keepdims=True)
    elif norm == "L2":
        d = np.sqrt((x2 * x2).sum(axis=1, keepdims=True))
    else:
        raise KernelError(f"Normalizer: unknown norm {norm!r}; use MAX, L1 or L2")
    out = np.where(d == 0, x2, x2 / np.where(d == 0, 1, d)).astype(np.float32)
    return out.reshape(x.shape)


@register("LinearRegressor", domain=ONNX_ML_DOMAIN, since=1)
def linear_regressor(x, *, coefficients=None, intercepts=None, post_transform="NONE", targets=1):
    x = np.asarray(x, dtype=np.float32)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    coef = np.asarray(coefficients if coefficients is not None else [], dtype=np.float32).reshape(targets, -1)
    if coef.shape[1] != x2.shape[1]:
        raise KernelError(f"LinearRegressor: {coef.shape[1]} coefficients per target but {x2.shape[1]} features")
    y = x2 @ coef.T
    if intercepts is not None:
        y = y + np.asarray(intercepts, dtype=np.float32)
    if post_transform not in _POST_NAMES:
        raise KernelError(f"LinearRegressor: unknown post_transform {post_transform!r}")
    return _post_transform(y.astype(np.float64), _POST_NAMES[post_transform]).astype(np.float32)


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


# ---------------------------------------------------------------- small ai.onnx.ml preprocessing ops


@register("Imputer", domain=ONNX_ML_DOMAIN, since=1)
def imputer(x, *, imputed_value_floats=None, imputed_value_int64s=None, replaced_value_float=0.0,
            replaced_value_int64=0):  # fmt: skip
    x = np.asarray(x)
    if imputed_value_floats is not None and len(imputed_value_floats):
        vals, target = np.asarray(imputed_value_floats, dtype=x.dtype), replaced_value_float
    elif imputed_value_int64s is not None and len(imputed_value_int64s):
        vals, target = np.asarray(imputed_value_int64s, dtype=x.dtype), replaced_value_int64
    else:
        raise KernelError("Imputer: one of imputed_value_floats, imputed_value_int64s is required")
    if vals.size != 1 and vals.size != x.shape[-1]:
        raise KernelError(f"Imputer: {vals.size} imputed values for {x.shape[-1]} features; give 1 or one per feature")
    hit = np.isnan(x) if x.dtype.kind == "f" and np.isnan(target) else x == target
    return np.where(hit, vals, x).astype(x.dtype)


@register("CategoryMapper", domain=ONNX_ML_DOMAIN, since=1)
def category_mapper(x, *, cats_int64s=None, cats_strings=None, default_int64=-1, default_string="_Unused"):
    if cats_int64s is None or cats_strings is None or len(cats_int64s) != len(cats_strings):
        raise KernelError("CategoryMapper: cats_int64s and cats_strings must both be given, of equal length")
    x = np.asarray(x)
    if x.dtype == object or x.dtype.kind in "SU":
        return _encode(x, _str_array(cats_strings), np.asarray(cats_int64s, np.int64), default_int64)
    return _encode(x.astype(np.int64), np.asarray(cats_int64s, np.int64), _str_array(cats_strings), default_string)


@register("FeatureVectorizer", domain=ONNX_ML_DOMAIN, since=1)
def feature_vectorizer(*inputs, inputdimensions=None):
    if inputdimensions is None or len(inputdimensions) != len(inputs):
        raise KernelError(f"FeatureVectorizer: inputdimensions must give one size per input ({len(inputs)} inputs)")
    first = np.asarray(inputs[0])
    n = 1 if first.ndim <= 1 else first.shape[0]
    cols = []
    for a, d in zip(inputs, inputdimensions):
        a = np.asarray(a, dtype=np.float32).reshape(n, -1)
        part = np.zeros((n, d), np.float32)
        k = min(d, a.shape[1])
        part[:, :k] = a[:, :k]
        cols.append(part)
    return np.concatenate(cols, axis=1)


@register("OneHotEncoder", domain=ONNX_ML_DOMAIN, since=1)
def one_hot_encoder(x, *, cats_int64s=None, cats_strings=None, zeros=1):
    x = np.asarray(x)
    if cats_strings is not None:
        keys = _str_array(cats_strings)
    elif cats_int64s is not None:
        keys = np.asarray(cats_int64s, np.int64)
        x = x.astype(np.int64) if x.dtype.kind == "f" else x
    else:
        raise KernelError("OneHotEncoder: one of cats_int64s, cats_strings is required")
    pos = _encode(x, keys, np.arange(keys.size, dtype=np.int64), -1)
    if not zeros and (pos < 0).any():
        raise KernelError("OneHotEncoder: input holds a category not in cats_* and zeros=0")
    return (pos[..., None] == np.arange(keys.size)).astype(np.float32)


@register("LinearClassifier", domain=ONNX_ML_DOMAIN, since=1)
def linear_classifier(ctx, x, *, coefficients=None, intercepts=None, classlabels_ints=None,
                      classlabels_strings=None, multi_class=0, post_transform="NONE"):  # fmt: skip
    x = np.asarray(x, dtype=np.float32)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    if classlabels_strings is not None:
        labels = _str_array(classlabels_strings)
    elif classlabels_ints is not None:
        labels = np.asarray(classlabels_ints, np.int64)
    else:
        raise KernelError("LinearClassifier: one of classlabels_ints, classlabels_strings is required")
    coef = np.asarray(coefficients if coefficients is not None else [], dtype=np.float32).reshape(-1, x2.shape[1])
    scores = (x2 @ coef.T).astype(np.float32)
    if intercepts is not None:
        scores = scores + np.asarray(intercepts, dtype=np.float32)
    if post_transform not in _POST_NAMES:
        raise KernelError(f"LinearClassifier: unknown post_transform {post_transform!r}")
    pt = _POST_NAMES[post_transform]
    if coef.shape[0] == 1 and labels.size == 2:
        # Binary with one score column s: positive class when s > 0 and the score output gets
        # both columns, [1 - s, s] (NONE) or [1 - p, p] with p = sigmoid(s) (LOGISTIC), as
        # onnxruntime does; other transforms apply to [-s, s].
        s = scores[:, 0].astype(np.float64)
        y = labels[(s > 0).astype(np.int64)]
        if pt in (0, 2):
            p = s if pt == 0 else 1.0 / (1.0 + np.exp(-s))
            z = np.stack([1 - p, p], axis=1)
        else:
            z = _post_transform(np.stack([-s, s], axis=1), pt)
    else:
        y = labels[np.argmax(scores, axis=1)]
        z = _post_transform(scores.astype(np.float64), pt)
    return y, z.astype(np.float32)


@register("TreeEnsembleClassifier", domain=ONNX_ML_DOMAIN, since=1)
def tree_ensemble_classifier(
    ctx,
    x,
    *,
    base_values=None,
    base_values_as_tensor=None,
    class_ids=None,
    class_nodeids=None,
    class_treeids=None,
    class_weights=None,
    class_weights_as_tensor=None,
    classlabels_int64s=None,
    classlabels_strings=None,
    post_transform="NONE",
    **nodes,
):
    """Pre-opset-5 classifier: outputs (labels [N], scores [N, classes]).
    ``nodes``: the nodes_* attributes (see _LEGACY_NODE_ATTRS)."""
    op = "TreeEnsembleClassifier"
    if classlabels_strings is not None:
        labels = _str_array(classlabels_strings)
    elif classlabels_int64s is not None:
        labels = np.asarray(classlabels_int64s, np.int64)
    else:
        raise KernelError(f"{op}: one of classlabels_int64s, classlabels_strings is required")
    if post_transform not in _POST_NAMES:
        raise KernelError(f"{op}: unknown post_transform {post_transform!r}")
    n_cls = labels.size
    per_tree, has_t = _legacy_forest(op, x, n_cls, nodes, class_treeids, class_nodeids, class_ids,
                                     _first(class_weights_as_tensor, class_weights))  # fmt: skip
    scores = per_tree.sum(axis=1)
    base = _first(base_values_as_tensor, base_values)
    weights = _first(class_weights_as_tensor, class_weights)
    used = sorted(set(int(c) for c in class_ids)) if class_ids is not None else []
    pt = _POST_NAMES[post_transform]
    if n_cls == 2 and len(used) == 1:
        # Binary forest scoring one class only (onnxruntime's convention): with all weights
        # >= 0 the score is a probability (positive when > 0.5, output [1 - s, s]); otherwise a
        # margin (positive when > 0, output [-s, s]).
        s = scores[:, used[0]] + (base[used[0]] if base is not None and base.size > used[0] else 0.0)
        if weights is None or (np.asarray(weights) >= 0).all():
            y = labels[(s > 0.5).astype(np.int64)]
            z = np.stack([1 - s, s], axis=1)
        else:
            y = labels[(s > 0).astype(np.int64)]
            z = np.stack([-s, s], axis=1)
        if pt == 2:
            z = 1.0 / (1.0 + np.exp(-z))
        elif pt:
            z = _post_transform(z, pt)
    else:
        if base is not None and base.size:
            scores = scores + base.astype(np.float64)
        y = labels[np.argmax(scores, axis=1)]
        z = _post_transform(scores, pt)
    return y, z.astype(np.float32)


# ---------------------------------------------------------------- map ops (maps are Python dicts)


@register("ZipMap", domain=ONNX_ML_DOMAIN, since=1)
def zip_map(x, *, classlabels_int64s=None, classlabels_strings=None):
    """Scores [N, C] -> a sequence (list) of N maps (dicts) label -> float score."""
    labels = classlabels_strings if classlabels_strings is not None else classlabels_int64s
    if labels is None:
        raise KernelError("ZipMap: one of classlabels_int64s, classlabels_strings is required")
    x = np.asarray(x, dtype=np.float32)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    if x2.shape[1] != len(labels):
        raise KernelError(f"ZipMap: {len(labels)} labels but scores have {x2.shape[1]} columns")
    labels = list(labels)
    return [dict(zip(labels, row)) for row in x2.tolist()]


@register("DictVectorizer", domain=ONNX_ML_DOMAIN, since=1)
def dict_vectorizer(x, *, int64_vocabulary=None, string_vocabulary=None):
    """A map (dict) -> [1, len(vocabulary)] tensor of its values, 0 where a key is absent."""
    vocab = string_vocabulary if string_vocabulary is not None else int64_vocabulary
    if vocab is None:
        raise KernelError("DictVectorizer: one of int64_vocabulary, string_vocabulary is required")
    if not isinstance(x, dict):
        raise KernelError(f"DictVectorizer: input must be a map (dict), got {type(x).__name__}")
    vals = list(x.values())
    sample = np.asarray(vals[:1]) if vals else np.zeros(0, np.float32)
    dtype = object if sample.dtype.kind in "OSU" else (sample.dtype if vals else np.float32)
    out = np.full((1, len(vocab)), "" if dtype is object else 0, dtype=dtype)
    for i, key in enumerate(vocab):
        if key in x:
            out[0, i] = x[key]
    return out


@register("CastMap", domain=ONNX_ML_DOMAIN, since=1)
def cast_map(x, *, cast_to="TO_FLOAT", map_form="DENSE", max_map=1):
    """A map int64 -> (string | float) -> [1, N] tensor, keys in ascending order (DENSE) or as
    positions of a length-``max_map`` vector (SPARSE, 0 where absent)."""
    if not isinstance(x, dict):
        raise KernelError(f"CastMap: input must be a map (dict), got {type(x).__name__}")
    kinds = {"TO_FLOAT": np.float32, "TO_INT64": np.int64, "TO_STRING": object}
    if cast_to not in kinds or map_form not in ("DENSE", "SPARSE"):
        raise KernelError(f"CastMap: bad cast_to {cast_to!r} or map_form {map_form!r}")
    dt = kinds[cast_to]

    def conv(v):
        if dt is object:
            return str(v)
        return dt(float(v)) if dt is np.float32 else dt(int(float(v)))

    keys = sorted(x)
    if map_form == "DENSE":
        out = np.empty((1, len(keys)), dtype=dt)
        for i, k in enumerate(keys):
            out[0, i] = conv(x[k])
        return out
    out = np.full((1, max_map), "" if dt is object else 0, dtype=dt)
    for k in keys:
        if not 0 <= int(k) < max_map:
            raise KernelError(f"CastMap: key {k} is outside [0, max_map={max_map})")
        out[0, int(k)] = conv(x[k])
    return out


# ---------------------------------------------------------------- SVMRegressor


def _svm_kernel(x, sv, kind, params):
    gamma, coef0, degree = (list(params) + [0.0, 0.0, 0.0])[:3] if params else (0.0, 0.0, 0.0)
    if kind == "LINEAR":
        return x @ sv.T
    if kind == "POLY":
        return (gamma * (x @ sv.T) + coef0) ** int(degree)
    if kind == "RBF":
        d2 = (x * x).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2 * (x @ sv.T)
        return np.exp(-gamma * np.maximum(d2, 0))
    if kind == "SIGMOID":
        return np.tanh(gamma * (x @ sv.T) + coef0)
    raise KernelError(f"SVM: unknown kernel_type {kind!r}; use LINEAR, POLY, RBF or SIGMOID")


@register("SVMRegressor", domain=ONNX_ML_DOMAIN, since=1)
def svm_regressor(x, *, coefficients=None, kernel_params=None, kernel_type="LINEAR", n_supports=0, one_class=0,
                  post_transform="NONE", rho=None, support_vectors=None):  # fmt: skip
    x = np.asarray(x, dtype=np.float64)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    coef = np.asarray(coefficients if coefficients is not None else [], dtype=np.float64)
    b = float(rho[0]) if rho else 0.0
    if n_supports > 0:
        sv = np.asarray(support_vectors, dtype=np.float64).reshape(n_supports, -1)
        if sv.shape[1] != x2.shape[1]:
            raise KernelError(f"SVMRegressor: support vectors have {sv.shape[1]} features, input {x2.shape[1]}")
        y = _svm_kernel(x2, sv, kernel_type, kernel_params) @ coef[:n_supports] + b
    else:  # linear model stored in coefficients
        y = x2 @ coef.reshape(-1)[: x2.shape[1]] + b
    if one_class:
        y = np.where(y > 0, 1.0, -1.0)
    if post_transform not in _POST_NAMES:
        raise KernelError(f"SVMRegressor: unknown post_transform {post_transform!r}")
    return _post_transform(y.reshape(-1, 1), _POST_NAMES[post_transform]).astype(np.float32)
