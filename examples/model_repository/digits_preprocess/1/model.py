"""Python backend model: image bytes (PNG/JPEG/...) -> the 8x8, 0..16 grayscale digits_cnn expects.

Dark-on-light images (e.g. a digit drawn on white paper) are inverted, since scikit-learn's
digits are light strokes on a dark background.
"""
import io

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image, UnidentifiedImageError


def to_digit_pixels(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    gray = np.asarray(img.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
    if gray.mean() > 127.5:
        gray = 255.0 - gray
    return (gray * (16.0 / 255.0)).reshape(1, 8, 8)


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            try:
                pixels = np.stack([to_digit_pixels(bytes(b)) for b in images])
            except (UnidentifiedImageError, OSError, ValueError) as e:
                err = pb_utils.TritonError(f"cannot decode the image (send PNG or JPEG bytes): {e}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", pixels.astype(np.float32))]))
        return responses
