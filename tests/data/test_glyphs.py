"""The glyphs data set: deterministic, split by face, every class everywhere, cached."""
from __future__ import annotations

import numpy as np
import pytest

import tuili.data.glyphs as glyphs_module
from tuili.data import CLASSES, glyph_set, load_glyphs
from tuili.data.glyphs import EXCLUDED_FACES, TEST_FACES, find_faces
from tuili.errors import ConfigError

SMALL = dict(per_glyph=2)  # 22 faces x 62 characters x 2: about a second to generate


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return glyph_set(0, cache_dir=tmp_path_factory.mktemp("glyphs"), **SMALL)


def test_faces_are_matplotlibs_with_all_characters():
    names = [f.name for f in find_faces()]
    assert len(names) >= 20
    for family in ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral", "cmr10", "cmtt10"):
        assert family in names
    assert not set(EXCLUDED_FACES) & set(names)
    assert not any("Display" in n or "STIXSiz" in n for n in names)  # no letters in those


def test_train_and_test_faces_are_disjoint_and_listed(small):
    assert set(small.test_faces) == set(TEST_FACES)
    assert not set(small.train_faces) & set(small.test_faces)
    assert set(small.train_faces) | set(small.test_faces) == {f.name for f in find_faces()}
    assert small.params["train_faces"] == list(small.train_faces) and small.params["version"] == glyphs_module.VERSION


def test_shapes_dtypes_and_ranges(small):
    n_train = len(small.train_faces) * len(CLASSES) * 2
    assert len(small.x_train) + len(small.x_val) == n_train
    assert len(small.x_test) == len(small.test_faces) * len(CLASSES) * 2
    for split in ("train", "val", "test"):
        x, y = small.split(split)
        assert x.dtype == np.float32 and x.shape[1:] == (1, 32, 32) and x.flags.c_contiguous
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert np.allclose(x * 255, np.round(x * 255), atol=1e-3)  # stored as uint8
        assert set(np.unique(y)) == set(range(62)), split  # every class in every split
    assert small.classes == CLASSES and len(CLASSES) == 62 and len(set(CLASSES)) == 62


def test_images_are_not_blank_or_constant(small):
    x = small.x_train[:, 0]
    spread = x.reshape(len(x), -1).std(axis=1)
    assert (spread > 0.02).mean() > 0.95  # a glyph stands out of nearly every background


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    again = glyph_set(0, cache_dir=tmp_path, **SMALL)  # generated afresh in an empty cache
    assert again.path != small.path or again.path.parent != small.path.parent
    for split in ("train", "val", "test"):
        assert small.split(split)[0].tobytes() == again.split(split)[0].tobytes()
        assert np.array_equal(small.split(split)[1], again.split(split)[1])
    other = glyph_set(1, cache_dir=tmp_path, **SMALL)
    assert other.path != again.path
    assert not np.array_equal(other.x_train, small.x_train)
    assert np.array_equal(np.sort(other.y_test), np.sort(small.y_test))  # same design, other jitter


def test_jitter_scales_the_variation(small, tmp_path):
    clean = glyph_set(0, jitter=0.0, cache_dir=tmp_path, **SMALL)
    # the test split is ordered face, character, sample: [0] and [1] are two samples of one glyph
    assert clean.y_test[0] == clean.y_test[1] and np.array_equal(clean.x_test[0], clean.x_test[1])
    assert not np.array_equal(small.x_test[0], small.x_test[1])
    assert clean.x_train.min() == 0.0 and clean.x_train.max() == 1.0  # black background, white ink, no noise
    assert (clean.x_train[:, 0, 0, 0] == 0).all()
    assert clean.path != small.path


def test_cache_hit_does_not_regenerate(small, monkeypatch):
    def refuse(*_):
        raise AssertionError("regenerated although the cache file exists")

    monkeypatch.setattr(glyphs_module, "_generate", refuse)
    hit = glyph_set(0, cache_dir=small.path.parent.parent, **SMALL)
    assert hit.path == small.path
    assert np.array_equal(hit.x_test, small.x_test) and np.array_equal(hit.y_train, small.y_train)
    x, y = load_glyphs("val", 0, cache_dir=small.path.parent.parent, **SMALL)
    assert np.array_equal(x, small.x_val) and np.array_equal(y, small.y_val)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUILI_CACHE_DIR", str(tmp_path))
    g = glyph_set(0, per_glyph=1)
    assert g.path.parent.parent == tmp_path and g.path.exists()
    assert g.path.name.startswith(f"glyphs-v{glyphs_module.VERSION}-")
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match="split 'dev'"):
        load_glyphs("dev", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="seed"):
        glyph_set(-1, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="per_glyph"):
        glyph_set(0, per_glyph=0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="val_fraction"):
        glyph_set(0, val_fraction=1.0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="jitter"):
        glyph_set(0, jitter=2.0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="Comic"):
        glyph_set(0, test_faces=("ComicSans",), cache_dir=tmp_path)
