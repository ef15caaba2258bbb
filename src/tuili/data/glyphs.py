"""glyphs: the 62 characters 0-9A-Za-z rendered from the fonts matplotlib ships, 32x32 grey.

A real-data task harder than scikit-learn's digits, so that compression, distillation and NAS
have accuracy that can fall. Nothing is downloaded: the faces are the TTF files in matplotlib's
``mpl-data/fonts/ttf`` (DejaVu Sans/Mono/Serif, STIX General, Computer Modern) that carry all
62 characters. Faces are split by name (:data:`TEST_FACES` never appear in training), and a
seeded, class-stratified :data:`VAL_FRACTION` of the training faces' samples is held out for
validation.

Each sample is one character of one face, rendered at 2x (64x64, fixed baseline, so lowercase
letters stay smaller than capitals) and then jittered from a seeded numpy Generator: stroke width
(grey erosion/dilation), rotation, shear, anisotropic scale, translation, 2x2 box down-sampling
to 32x32, Gaussian blur, background level and linear gradient, contrast, polarity and Gaussian
noise. Images are float32 (N, 1, 32, 32) in [0, 1] (stored as uint8, so values are k/255),
labels int64 0..61 indexing :data:`CLASSES`.

Generated once per parameter set (a few seconds) and cached as .npz under
:func:`tuili.data.cache.cache_dir` (``$TUILI_CACHE_DIR`` or ``~/.cache/tuili``), keyed by every
generation parameter, the face list and :data:`VERSION`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from tuili.data import cache
from tuili.errors import ConfigError

log = logging.getLogger(__name__)

VERSION = 1  # bump whenever rendering or jitter changes: old cache files are then ignored
CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SIZE = 32
# Fonts whose cmap maps ASCII code points to something other than letters and digits.
EXCLUDED_FACES = {
    "cmex10": "TeX math extension symbols",
    "cmsy10": "TeX math symbols",
    "LastResortHE-Regular": "placeholder boxes",
}
# Held-out faces, one or two per family, never seen in training.
TEST_FACES = ("DejaVuSansMono-Oblique", "DejaVuSerif-Bold", "STIXGeneralItalic", "cmss10", "cmti10")
VAL_FRACTION = 0.1
PER_GLYPH = 24  # samples per (face, character)
SPLITS = ("train", "val", "test")

_HI = 2 * SIZE  # render at 2x, box-filter down
_EM = 40  # font size in pixels at 2x: caps ~28 px, descenders ~8 px
_BASELINE = 44  # at 2x; leaves room above capitals and below descenders
_INVERT = 0.3  # share of light-on-dark images flipped to dark-on-light


@dataclasses.dataclass(frozen=True)
class Face:
    name: str  # file stem, e.g. "DejaVuSans-Bold"
    path: Path


@dataclasses.dataclass
class GlyphSet:
    """All three splits of one generated set, and what it was generated from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_faces: tuple[str, ...]
    test_faces: tuple[str, ...]
    params: dict
    path: Path  # the cache file
    classes: str = CLASSES

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of split ``name`` ("train", "val" or "test")."""
        _check_split(name)
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise ConfigError(f"unknown glyphs split {name!r}; use one of {', '.join(SPLITS)}")


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def find_faces() -> list[Face]:
    """matplotlib's bundled faces that have all 62 characters, sorted by name."""
    from fontTools.ttLib import TTFont

    faces = []
    for path in sorted(font_dir().glob("*.ttf")):
        if path.stem in EXCLUDED_FACES:
            continue
        cmap = TTFont(path, lazy=True).getBestCmap() or {}
        if all(ord(c) in cmap for c in CLASSES):
            faces.append(Face(path.stem, path))
    return faces


def load_glyphs(split: str = "train", seed: int = 0, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one split: float32 (N, 1, 32, 32) in [0, 1], int64 labels 0..61.
    Keyword arguments are those of :func:`glyph_set`."""
    _check_split(split)  # before generating anything
    return glyph_set(seed, **kw).split(split)


def glyph_set(seed: int = 0, *, per_glyph: int = PER_GLYPH, val_fraction: float = VAL_FRACTION,
              jitter: float = 1.0, test_faces: tuple[str, ...] = TEST_FACES, cache_dir=None) -> GlyphSet:
    """The glyphs data set for ``seed``: loaded from the cache, or generated and cached.

    ``per_glyph`` samples are drawn per face and character; ``jitter`` scales every jitter range
    (1.0: the data set as documented, 0.0: clean renderings; smaller sets and milder jitter make
    quick experiments and tests)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"glyphs: seed must be a non-negative integer, got {seed!r}")
    if int(per_glyph) != per_glyph or per_glyph < 1:
        raise ConfigError(f"glyphs: per_glyph must be a positive integer, got {per_glyph!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"glyphs: val_fraction must be in (0, 1), got {val_fraction!r}")
    if not 0.0 <= jitter <= 1.0:
        raise ConfigError(f"glyphs: jitter must be in [0, 1] (a share of the documented ranges), got {jitter!r}")
    faces = find_faces()
    found = {f.name for f in faces}
    unknown = [n for n in test_faces if n not in found]
    if unknown:
        raise ConfigError(f"glyphs: test faces {unknown} are not among matplotlib's fonts with all 62 characters "
                          f"({', '.join(sorted(found))}); pick test faces from that list")
    test = [f for f in faces if f.name in test_faces]
    train = [f for f in faces if f.name not in test_faces]
    if not train or not test:
        raise ConfigError(f"glyphs: need at least one training and one test face; found {len(faces)} faces in {font_dir()}")
    params = {"version": VERSION, "seed": int(seed), "size": SIZE, "per_glyph": int(per_glyph),
              "val_fraction": float(val_fraction), "jitter": float(jitter), "train_faces": [f.name for f in train],
              "test_faces": [f.name for f in test]}
    path = cache.cache_dir(cache_dir) / "glyphs" / f"glyphs-v{VERSION}-{cache.key(params)}.npz"
    if not path.exists():
        log.info("generating glyphs (%d train + %d test faces, %d per glyph) into %s", len(train), len(test), per_glyph, path)
        cache.save_npz(path, _generate(train, test, params))
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    as_float = lambda u8: (u8.astype(np.float32) / np.float32(255.0))[:, None]  # noqa: E731
    return GlyphSet(as_float(a["x_train"]), a["y_train"], as_float(a["x_val"]), a["y_val"], as_float(a["x_test"]),
                    a["y_test"], tuple(params["train_faces"]), tuple(params["test_faces"]), params, path)


# ----------------------------------------------------------------------------- generation


def _generate(train: list[Face], test: list[Face], params: dict) -> dict[str, np.ndarray]:
    seed, n, j = params["seed"], params["per_glyph"], params["jitter"]
    xtr, ytr = _render_faces(train, seed, n, j)
    xte, yte = _render_faces(test, seed, n, j)
    val = _val_indices(ytr, params["val_fraction"], np.random.default_rng([seed, 1]))
    keep = np.setdiff1d(np.arange(len(ytr)), val)
    return {"x_train": xtr[keep], "y_train": ytr[keep], "x_val": xtr[val], "y_val": ytr[val], "x_test": xte, "y_test": yte}


def _val_indices(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A stratified random subset: ceil(fraction * n_c) samples of every class c."""
    picks = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(y == c)
        picks.append(rng.choice(idx, size=math.ceil(fraction * len(idx)), replace=False))
    return np.sort(np.concatenate(picks))


def _render_faces(faces: list[Face], seed: int, per_glyph: int, j: float) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for face in faces:
        # One stream per face, keyed by its name: adding a font leaves the other faces' samples alone.
        rng = np.random.default_rng([seed, zlib.crc32(face.name.encode())])
        masks = _masks(face)
        labels = np.repeat(np.arange(len(CLASSES)), per_glyph)
        xs.append(_jitter(masks[labels], rng, j))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def _masks(face: Face) -> np.ndarray:
    """uint8 (62, 64, 64) coverage masks of every character, centred horizontally on a fixed baseline."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(face.path), _EM)
    out = np.empty((len(CLASSES), _HI, _HI), np.uint8)
    for i, ch in enumerate(CLASSES):
        im = Image.new("L", (_HI, _HI), 0)
        left, _, right, _ = font.getbbox(ch, anchor="ls")
        ImageDraw.Draw(im).text((_HI / 2 - (left + right) / 2, _BASELINE), ch, font=font, fill=255, anchor="ls")
        out[i] = np.asarray(im)
    return out


def _jitter(masks: np.ndarray, rng: np.random.Generator, j: float) -> np.ndarray:
    """uint8 (N, 32, 32) jittered renderings of ``masks`` (N, 64, 64); ``j`` scales every range."""
    from scipy import ndimage

    n = len(masks)
    stroke = np.round(rng.integers(-1, 3, n) * j).astype(int)  # -1 thins, 0 keeps, 1/2 thicken (pixels at 2x)
    angle = np.deg2rad(rng.uniform(-12, 12, n) * j)
    shear = rng.uniform(-0.25, 0.25, n) * j
    scale = (1 + rng.uniform(-0.2, 0.15, n) * j)[:, None] * (1 + rng.uniform(-0.1, 0.1, (n, 2)) * j)  # (sy, sx)
    shift = rng.uniform(-3, 3, (n, 2)) * j * 2  # output pixels, at 2x
    blur = rng.uniform(0.0, 1.0, n) * j
    out = np.empty((n, SIZE, SIZE), np.float32)
    centre = np.array([(_HI - 1) / 2, (_HI - 1) / 2])
    for i in range(n):
        m = masks[i]
        if stroke[i] < 0:
            m = ndimage.grey_erosion(m, size=(2, 2))
        elif stroke[i] > 0:
            m = ndimage.grey_dilation(m, size=(stroke[i] + 1, stroke[i] + 1))
        c, s = math.cos(angle[i]), math.sin(angle[i])
        # output (row, col) -> source (row, col): inverse of scale . shear . rotation
        fwd = np.array([[c, -s], [s, c]]) @ np.array([[1.0, 0.0], [shear[i], 1.0]]) @ np.diag(scale[i])
        inv = np.linalg.inv(fwd)
        offset = centre - inv @ (centre + shift[i])
        hi = ndimage.affine_transform(m.astype(np.float32), inv, offset, output_shape=(_HI, _HI), order=1)
        lo = hi.reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3)) / 255.0
        out[i] = ndimage.gaussian_filter(lo, blur[i]) if blur[i] > 0.3 else lo
    return (_paint(out, rng, j) * 255.0 + 0.5).astype(np.uint8)


def _paint(cover: np.ndarray, rng: np.random.Generator, j: float) -> np.ndarray:
    """Coverage in [0, 1] -> grey image: background level + linear gradient, ink contrast, polarity, noise."""
    n = len(cover)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) - 0.5
    theta = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    ramp = np.cos(theta) * xx + np.sin(theta) * yy  # in [-0.71, 0.71]
    bg = (rng.uniform(0.0, 0.45, n)[:, None, None] + rng.uniform(0.0, 0.3, n)[:, None, None] * ramp) * j
    ink = 1.0 - rng.uniform(0.0, 0.65, n)[:, None, None] * j
    img = bg + ink * cover
    invert = rng.random(n) < _INVERT * j
    img[invert] = 1.0 - img[invert]
    img = img + rng.normal(0.0, 1.0, img.shape) * rng.uniform(0.0, 0.08, n)[:, None, None] * j
    return np.clip(img, 0.0, 1.0)
