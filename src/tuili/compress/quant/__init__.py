"""tuili.compress.quant — post-training quantization to QDQ ONNX that onnxruntime runs unmodified.

    from tuili.compress.quant import quantize_static, quantize_dynamic
    report = quantize_static("m.onnx", "m.int8.onnx", "calib.npz", method="mse")       # -> Report
    report = quantize_dynamic("bert.onnx", "bert.int8.onnx")                           # MatMul/Gemm
    report = quantize_int4("gpt.onnx", "gpt.int4.onnx", block_size=128)                # weight-only int4
    result = quantize_mixed("m.onnx", "m.mixed.onnx", "calib.npz", budget=30.0)        # keeps float by measurement
    qm = prepare_qat(torch_model, calib_x, weight_bits=4); finetune_qat(qm, data)      # QAT (torch), then
    report = export_qat(qm, "m.qat.onnx", calib_x)                                     # the same QDQ format
    print(report.summary())

Modules: ``qparams`` (integer ranges, scale/zero point, numpy Q/DQ), ``observers`` (min-max,
percentile, entropy, MSE; streaming, per tensor or per channel), ``calibrate`` (readers and the
calibration pass), ``prepare`` (tuili's passes before quantizing), ``qdq`` (what gets Q/DQ, and the
rewrite), ``ptq`` (static), ``dynamic`` (run-time activation scales), ``blocks``/``int4``/``gptq`` (4-bit
weights per block, GPTQ rounding), ``sensitivity`` (per-layer accuracy and latency, mixed precision),
``latency``, ``report``, ``qat`` (quantization-aware training in torch, learned LSQ scales exported as QDQ).
"""
from tuili.compress.quant.calibrate import (
    ArrayReader,
    InputSpec,
    IterableReader,
    NpzReader,
    RandomReader,
    Reader,
    check_feed,
    collect,
    model_inputs,
    reader_for,
)
from tuili.compress.quant.dynamic import quantize_dynamic
from tuili.compress.quant.int4 import quantize_int4
from tuili.compress.quant.observers import (
    OBSERVERS,
    EntropyObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from tuili.compress.quant.ptq import DEFAULT_METHOD, quantize_static
from tuili.compress.quant.qat import export_qat, finetune_qat, prepare_qat
from tuili.compress.quant.qparams import QType, dequantize, qtype, quantize, scale_zero_point
from tuili.compress.quant.report import FloatNode, Report
from tuili.compress.quant.sensitivity import MixedResult, load_metric, quantize_mixed

__all__ = ["ArrayReader", "DEFAULT_METHOD", "EntropyObserver", "FloatNode", "InputSpec", "IterableReader",
           "MSEObserver", "MinMaxObserver", "MixedResult", "NpzReader", "OBSERVERS", "Observer", "PercentileObserver", "QType",
           "RandomReader", "Reader", "Report", "check_feed", "collect", "dequantize", "export_qat", "finetune_qat", "load_metric",
           "make_observer", "model_inputs", "prepare_qat", "qtype", "quantize", "quantize_dynamic", "quantize_int4", "quantize_mixed", "quantize_static", "reader_for", "scale_zero_point"]
