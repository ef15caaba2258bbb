"""A trained digits_cnn keeps its accuracy after static PTQ (trains in seconds; marked zoo)."""
from __future__ import annotations

import onnxruntime as ort
import pytest

from tuili.compress.quant import quantize_static


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    from tuili import zoo

    out = tmp_path_factory.mktemp("digits")
    result = zoo.train("digits_cnn", out_dir=out, progress=False, epochs=4)
    return result.onnx_path, zoo.digits_data()


def _accuracy(path, x, y) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_trained_digits_keeps_accuracy(trained_digits, tmp_path, method):
    path, data = trained_digits
    out = tmp_path / "digits.int8.onnx"
    report = quantize_static(path, out, {"input": data.x_train}, method=method)  # calibrate on train, test on test
    assert report.quantized["Conv"] == 4 and report.samples == len(data.x_train)
    fp32, int8 = _accuracy(path, data.x_test, data.y_test), _accuracy(out, data.x_test, data.y_test)
    assert fp32 > 0.9
    assert int8 >= fp32 - 0.01
