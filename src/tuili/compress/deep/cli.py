"""`tuili deep-compress MODEL -o OUT.tdc` (and `--decompress IN.tdc -o OUT.onnx`): Deep Compression."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deep-compress", help="Deep Compression: prune, share weights, Huffman-code (.tdc file)",
                       description="A checkpoint from `tuili zoo train`: gradual magnitude pruning with fine-tuning, "
                                   "BatchNorm folding, k-means weight sharing with centroid fine-tuning, Huffman coding; "
                                   "every stage's size and test accuracy. An .onnx: the same without training (per-tensor "
                                   "magnitude pruning, k-means, Huffman). --decompress rebuilds the ONNX model. The file "
                                   "format is described in docs/compression.md. The input is never modified.")
    p.add_argument("model", help="a .pt checkpoint from `tuili zoo train`, an .onnx, or (--decompress) a .tdc file")
    p.add_argument("-o", "--output", required=True, help="the .tdc to write (--decompress: the .onnx)")
    p.add_argument("--decompress", action="store_true", help="rebuild the ONNX model of a .tdc file")
    p.add_argument("--sparsity", type=float, help="fraction of weights to prune (default 0.9 for a checkpoint; "
                                                  "an .onnx is not pruned unless given)")
    p.add_argument("--conv-bits", type=int, default=5, help="log2 of the shared weights per conv layer (default 5)")
    p.add_argument("--fc-bits", type=int, default=4, help="log2 of the shared weights per fully connected layer (default 4)")
    p.add_argument("--epochs", type=float, help="pruning epochs in all: masks tighten over the first half (checkpoint; default 2)")
    p.add_argument("--share-epochs", type=float, help="centroid fine-tuning epochs (checkpoint; default 1)")
    p.add_argument("--steps", type=int, help="gradual pruning: mask updates (checkpoint; default 16)")
    p.add_argument("--distill", action="store_true", help="the unpruned model teaches every fine-tune (checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=deep_command)


def deep_command(args: argparse.Namespace) -> int:
    from tuili.errors import ConfigError

    training = [o for o, v in (("--epochs", args.epochs), ("--share-epochs", args.share_epochs), ("--steps", args.steps),
                                   ("--distill", args.distill or None)) if v is not None]
    if args.decompress:
        from tuili.compress.deep import decompress

        given = training + (["--sparsity"] if args.sparsity is not None else [])
        if given:
            raise ConfigError(f"option(s) {', '.join(given)} do not apply to --decompress")
        print(f"wrote {decompress(args.model, args.output)}")
        return 0
    bits = {"conv": args.conv_bits, "fc": args.fc_bits}
    if args.model.endswith(".onnx"):
        from tuili.compress.deep import compress

        if training:
            raise ConfigError(f"option(s) {', '.join(training)} need a trainable model: give a checkpoint from "
                              "`tuili zoo train` instead of an .onnx")
        for k, b in bits.items():
            if not 1 <= b <= 8:
                raise ConfigError(f"--{k}-bits must be in 1..8, got {b}")
        print(compress(args.model, args.output, cluster_bits=bits, sparsity=args.sparsity).table())
        return 0
    from tuili.compress.deep import deep_compress
    from tuili.compress.prune.cli import load_model

    model, data, _ = load_model(args.model)
    if data is None:
        raise ConfigError(f"{args.model!r}: deep compression of a torch model fine-tunes on its data set; give a "
                          "checkpoint from `tuili zoo train` (or an exported .onnx for the data-free path)")
    result = deep_compress(model, data, args.output, sparsity=0.9 if args.sparsity is None else args.sparsity,
                           steps=args.steps or 16, prune_epochs=2.0 if args.epochs is None else args.epochs,
                           share_epochs=1.0 if args.share_epochs is None else args.share_epochs, bits=bits,
                           distill=args.distill, seed=args.seed)
    print(result.table())
    print(result.report.table())
    print(f"wrote {args.output}")
    return 0
