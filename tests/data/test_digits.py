"""scikit-learn's digits through tuili.data: the fixed split every stage measures on."""
from __future__ import annotations

import numpy as np
import pytest

from tuili.data import load_digits
from tuili.errors import ConfigError


def test_fixed_stratified_split():
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    assert xtr.shape == (1347, 1, 8, 8) and xte.shape == (450, 1, 8, 8)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert xte.max() == 16.0 and xte.min() == 0.0  # raw pixel values
    assert np.bincount(yte).min() >= 43
    again, _ = load_digits("test")
    assert np.array_equal(again, xte)
    again[0] = -1  # callers get copies
    assert load_digits("test")[0].min() == 0.0


def test_no_validation_split():
    with pytest.raises(ConfigError, match="no validation split"):
        load_digits("val")
