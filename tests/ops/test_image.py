"""ImageDecoder (tuili.ops.image) on images Pillow encodes here."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.ops._ortref import run_tuili


def _encode(img: np.ndarray, fmt: str) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip(fmt):
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = _encode(img, fmt)
    rgb = run_tuili("ImageDecoder", [data], opset=20)[0]
    np.testing.assert_array_equal(rgb, img)
    bgr = run_tuili("ImageDecoder", [data], opset=20, pixel_format="BGR")[0]
    np.testing.assert_array_equal(bgr, img[:, :, ::-1])
    gray = run_tuili("ImageDecoder", [data], opset=20, pixel_format="Grayscale")[0]
    assert gray.shape == (7, 5, 1) and gray.dtype == np.uint8


def test_garbage_gives_empty_tensor():
    out = run_tuili("ImageDecoder", [np.arange(10, dtype=np.uint8)], opset=20)[0]
    assert out.shape == (0, 0, 3) and out.dtype == np.uint8
