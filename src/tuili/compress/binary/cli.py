"""`tuili binarize glyphs_cnn --data glyphs -o out/` and `tuili binarize --to-tuili in.onnx -o out.onnx`."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("binarize", help="binarize a zoo CNN (BNN / XNOR-Net) or rewrite a binary ONNX to tuili::BinaryConv",
                       description="Trains the float twin of a zoo CNN (or loads --float-checkpoint), binarizes its "
                                   "convolutions (sign weights with XNOR-Net per-channel scales, sign activations; first "
                                   "conv and the classifier stay float), trains the binary model from the float weights "
                                   "and writes MODEL.float.onnx, MODEL.binary.onnx (Sign + Conv, any engine) and "
                                   "MODEL.binary.tuili.onnx (bit-packed tuili::BinaryConv, tuili's XNOR/popcount "
                                   "kernel). With --to-tuili IN.onnx only that last rewrite is done.")
    p.add_argument("model", nargs="?", default="glyphs_cnn", help="zoo model (default glyphs_cnn)")
    p.add_argument("--to-tuili", metavar="IN.onnx", help="rewrite Sign -> Conv pairs of this model; -o is the output file")
    p.add_argument("--width", type=float, help="width multiplier")
    p.add_argument("--data", default="glyphs", choices=["glyphs", "digits"], help="training data (default glyphs)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of binary training (default 8)")
    p.add_argument("--float-epochs", type=int, help="epochs of the float twin (default: --epochs)")
    p.add_argument("--float-checkpoint", metavar="PT", help="a trained float model (.pt from `tuili zoo train`)")
    p.add_argument("--weights-only", action="store_true", help="binarize weights only (BWN); activations stay float")
    p.add_argument("--binarize-first", action="store_true", help="binarize the first convolution too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="binarize_runs", help="output directory (a file with --to-tuili)")
    p.set_defaults(func=binarize_command)


def binarize_command(args: argparse.Namespace) -> int:
    from tuili.errors import ConfigError

    if args.to_tuili:
        from tuili.compress.binary import to_binary_ops

        given = [o for o, v in (("--width", args.width), ("--float-epochs", args.float_epochs),
                                ("--float-checkpoint", args.float_checkpoint)) if v is not None]
        given += [o for o, v in (("--weights-only", args.weights_only), ("--binarize-first", args.binarize_first)) if v]
        if given:
            raise ConfigError(f"option(s) {', '.join(given)} are for training; --to-tuili only rewrites a model")
        done = to_binary_ops(args.to_tuili, args.output)
        print(f"{args.output}: {len(done)} Sign -> Conv pairs became tuili::BinaryConv ({', '.join(done) or 'none found'})")
        return 0
    from tuili.compress.binary import binarize_zoo

    if args.float_checkpoint and (args.width is not None or args.float_epochs is not None):
        raise ConfigError("--width/--float-epochs do not apply with --float-checkpoint (the float model is given)")
    run = binarize_zoo(args.model, width=args.width, data=args.data, epochs=args.epochs, float_epochs=args.float_epochs,
                       float_checkpoint=args.float_checkpoint, keep_first=not args.binarize_first,
                       binarize_input=not args.weights_only, out_dir=args.output, seed=args.seed)
    print(run.summary())
    return 0
