"""tuili.data — data sets that ship with a package or are generated here; no downloads.

    load_digits(split="train"|"test") -> (x, y)      scikit-learn's 8x8 digits, fixed 75/25 split
    load_glyphs(split="train"|"val"|"test", seed=0) -> (x, y)
                                                    0-9A-Za-z from matplotlib's fonts, 32x32, split by face
    glyph_set(seed=0, ...) -> GlyphSet               all glyph splits + faces, classes, cache path
    cache_dir() -> Path                              $TUILI_CACHE_DIR or ~/.cache/tuili

This layer sits on top of the engine: nothing in ir, ops, passes, runtime, backends or serve imports it.
"""
from tuili.data.cache import cache_dir
from tuili.data.digits import load_digits
from tuili.data.glyphs import CLASSES, GlyphSet, glyph_set, load_glyphs

__all__ = ["cache_dir", "load_digits", "load_glyphs", "glyph_set", "GlyphSet", "CLASSES"]
