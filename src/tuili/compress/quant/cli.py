"""`tuili qat MODEL -o OUT.onnx [--epochs N] [--bits 8|4] [--activation-bits 8|4] ...`: quantization-aware
training of a trained digits/glyphs zoo classifier, exported as QDQ ONNX, reported beside fp32 and PTQ."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("qat", help="quantization-aware training of a zoo classifier, exported as QDQ ONNX",
                       description="Fine-tunes a trained digits/glyphs zoo classifier with fake quantization in the "
                                   "loop (per-channel weights with learned LSQ scales, activations with learned scale "
                                   "and zero point, BatchNorm folded), then writes the same QDQ ONNX as `tuili "
                                   "quantize`. Calibration and training use the model's TRAIN split; the report gives "
                                   "top-1 on the TEST split in onnxruntime for fp32, PTQ (`tuili quantize` on the same "
                                   "calibration samples and bits) and QAT. The checkpoint is never modified.")
    p.add_argument("model", help="a checkpoint .pt from `tuili zoo train`, or a zoo model name (digits_cnn, glyphs_cnn, "
                                 "...: trained first with its default recipe, cached under $TUILI_CACHE_DIR/qat)")
    p.add_argument("-o", "--output", required=True, help="where to write the QAT .onnx")
    p.add_argument("--epochs", type=float, default=2.0, help="QAT fine-tuning epochs, fractions allowed (default 2)")
    p.add_argument("--bits", type=int, default=8, metavar="W", help="weight bits, 2..8 (default 8)")
    p.add_argument("--activation-bits", type=int, choices=[8, 4], default=8,
                   help="8 (uint8, default) or 4 (uint4, opset 21: onnxruntime runs it at graph optimization level basic)")
    p.add_argument("--int4-storage", action="store_true",
                   help="store weights of <= 4 bits as ONNX int4 (opset 21, half the bytes) instead of int8")
    p.add_argument("--calib-samples", type=int, default=512, metavar="N",
                   help="train-split samples that initialise the quantizers and calibrate PTQ (default 512)")
    p.add_argument("--method", choices=["mse", "entropy", "percentile", "minmax"],
                   help="observer for the initial activation ranges and PTQ (default mse)")
    p.add_argument("--samples", type=int, metavar="N", help="train samples per epoch (default: the whole train split)")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate, cosine schedule (default 5e-4)")
    p.add_argument("--train-epochs", type=int, metavar="N",
                   help="with a zoo model name: fp32 training epochs (default: the model's recipe); retrains")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=qat_command)


def qat_command(args: argparse.Namespace) -> int:
    from tuili.compress.quant.ptq import DEFAULT_METHOD
    from tuili.compress.quant.qatrun import qat_zoo
    from tuili.errors import ConfigError

    if args.int4_storage and args.bits > 4:
        raise ConfigError(f"--int4-storage holds at most 4 bits; --bits is {args.bits}")
    run = qat_zoo(args.model, args.output, epochs=args.epochs, weight_bits=args.bits,
                  activation_bits=args.activation_bits, weight_type="int4" if args.int4_storage else "int8",
                  calib_samples=args.calib_samples, samples=args.samples, lr=args.lr,
                  method=args.method or DEFAULT_METHOD, seed=args.seed, train_epochs=args.train_epochs)
    print(run.summary())
    return 0
