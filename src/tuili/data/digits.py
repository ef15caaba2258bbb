"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), split once.

The split is fixed (25% test, stratified, ``random_state=0``) so every run and every later stage
(training, quantization, pruning, distillation) measures on the same test set. Images are raw
float32 (N, 1, 8, 8) pixel values 0..16, as scikit-learn ships them; labels int64 0..9.
"""
from __future__ import annotations

import functools

import numpy as np

from tuili.errors import ConfigError

TEST_FRACTION = 0.25
SPLIT_SEED = 0
SPLITS = ("train", "test")


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one split (copies: callers may modify them)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown digits split {split!r}; use one of {', '.join(SPLITS)} (digits has no validation split)")
    x, y = _splits()[split]
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    ds = sk_load_digits()
    x = np.ascontiguousarray(ds.images[:, None], np.float32)
    y = ds.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return {"train": (np.ascontiguousarray(xtr), ytr), "test": (np.ascontiguousarray(xte), yte)}
