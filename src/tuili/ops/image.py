"""ImageDecoder (opset 20): decode an encoded image (1-D uint8 bytes) with Pillow into an
(H, W, C) uint8 tensor, C = 3 for RGB/BGR and 1 for Grayscale. Undecodable input gives an
empty tensor, as the spec requires. The output is a fresh array.
"""
from __future__ import annotations

import io
import logging

import numpy as np

from tuili.errors import KernelError
from tuili.ops.registry import register

log = logging.getLogger(__name__)


@register("ImageDecoder", since=20)
def image_decoder(encoded_stream, *, pixel_format="RGB"):
    if pixel_format not in ("RGB", "BGR", "Grayscale"):
        raise KernelError(f"ImageDecoder: pixel_format {pixel_format!r}; use RGB, BGR or Grayscale")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise KernelError("ImageDecoder: Pillow is not installed; `pip install pillow`") from None
    channels = 1 if pixel_format == "Grayscale" else 3
    data = np.ascontiguousarray(encoded_stream, dtype=np.uint8).tobytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            out = np.array(img, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "empty output"
        log.warning("ImageDecoder: cannot decode %d bytes (%s); returning an empty tensor", len(data), e)
        return np.zeros((0, 0, channels), dtype=np.uint8)
    if channels == 1:
        return out[:, :, None]
    return np.ascontiguousarray(out[:, :, ::-1]) if pixel_format == "BGR" else out
