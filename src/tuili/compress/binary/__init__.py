"""tuili.compress.binary — BNN / XNOR-Net binarization: torch layers, training, two ONNX forms.

    from tuili.compress.binary import binarize, binarize_zoo, to_binary_ops
    bmodel, layers = binarize(model)                   # Conv2d -> BinaryConv2d (first conv and Linear stay float)
    run = binarize_zoo("glyphs_cnn", data="glyphs")     # float twin, binary training, ONNX (Sign+Conv, tuili::BinaryConv)
    to_binary_ops("m.binary.onnx", "m.tuili.onnx")     # Sign -> Conv pairs -> bit-packed tuili::BinaryConv

Modules: ``layers`` (STE sign, BinaryConv2d, binarize), ``export`` (the tuili-op rewrite), ``zoo``
(end to end on a zoo CNN), ``cli``. The kernel is :mod:`tuili.ops.binary`. Importing ``layers``/
``zoo`` imports torch; ``export`` does not.
"""
from __future__ import annotations

from tuili.compress.binary.export import to_binary_ops

__all__ = ["BinaryConv2d", "BinarizeRun", "binarize", "binarize_zoo", "sign_ste", "to_binary_ops"]


def __getattr__(name: str):  # torch-backed names load on first use
    if name in ("BinaryConv2d", "binarize", "sign_ste"):
        from tuili.compress.binary import layers

        return getattr(layers, name)
    if name in ("BinarizeRun", "binarize_zoo"):
        from tuili.compress.binary import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
