"""`tuili prune MODEL -o OUT.onnx (--sparsity S | --flops F) [--structured] ...`: magnitude or channel
pruning of a zoo model, with fine-tuning on its data set. MODEL is a checkpoint written by
`tuili zoo train` (trained weights; its data set is used for fine-tuning and the test accuracy) or a
zoo model name (random weights: a smoke test, no accuracy)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune a zoo model: unstructured (zeros) or structured (fewer channels)",
                       description="Unstructured: zero the smallest weights of every Conv/Linear (global or per layer; "
                                   "one shot or gradual on Zhu & Gupta's cubic schedule with fine-tuning between steps). "
                                   "--structured: remove whole channels in coupled groups (residual adds, concats, "
                                   "depthwise convs, BatchNorm, Linear after flatten stay consistent); the exported "
                                   "model is physically smaller. The input is never modified.")
    p.add_argument("model", help="a checkpoint .pt from `tuili zoo train`, or a zoo model name (random weights)")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned .onnx")
    p.add_argument("--sparsity", type=float, help="fraction of weights (unstructured) or of each layer's channels "
                                                  "(--structured) to remove, in (0, 1)")
    p.add_argument("--flops", type=float, metavar="F", help="--structured: keep this fraction of the FLOPs instead")
    p.add_argument("--structured", action="store_true", help="remove channels instead of single weights")
    p.add_argument("--criterion", choices=["l1", "l2", "bn", "taylor"], help="--structured: channel importance (default l1)")
    p.add_argument("--scope", choices=["global", "layer"],
                   help="rank weights over all layers or within each layer (default: global unstructured, layer structured)")
    p.add_argument("--schedule", choices=["oneshot", "gradual"], help="unstructured: default oneshot")
    p.add_argument("--steps", type=int, help="gradual schedule: pruning steps (default 4)")
    p.add_argument("--epochs", type=float, default=0.0,
                   help="fine-tuning epochs (gradual: masks tighten over these, then as many at the target; default 0)")
    p.add_argument("--distill", action="store_true", help="the unpruned model teaches the fine-tune (soft targets)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=prune_command)


def load_model(spec: str):
    """(torch module, TrainData or None, resolution) from a checkpoint path or a zoo name."""
    from pathlib import Path

    from tuili import zoo

    if spec.endswith(".pt") or Path(spec).is_file():
        import torch

        from tuili.errors import ModelLoadError

        try:
            ck = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"cannot read checkpoint {spec}: {e}; give a .pt written by `tuili zoo train`") from e
        model = zoo.load_checkpoint(spec)
        data = (zoo.digits_data if ck.get("data", "digits") == "digits" else zoo.glyphs_data)(ck["model"], ck["resolution"])
        return model, data, ck["resolution"]
    model = zoo.create(spec)
    return model, None, model.zoo_spec.default_resolution


def _example(model, data, resolution):
    import torch

    if data is not None:
        return torch.from_numpy(data.x_test[:2])
    return torch.randn(2, model.zoo_spec.in_channels, resolution, resolution)


def prune_command(args: argparse.Namespace) -> int:
    from tuili.compress.train import accuracy, export_onnx
    from tuili.errors import ConfigError

    if args.structured:
        wrong = [o for o, v in (("--schedule", args.schedule), ("--steps", args.steps)) if v is not None]
    else:
        wrong = [o for o, v in (("--flops", args.flops), ("--criterion", args.criterion)) if v is not None]
    if wrong:
        raise ConfigError(f"option(s) {', '.join(wrong)} do not apply to {'structured' if args.structured else 'unstructured'} "
                          "pruning")
    model, data, res = load_model(args.model)
    if args.epochs > 0 and data is None:
        raise ConfigError(f"--epochs needs training data: give a checkpoint from `tuili zoo train`, not {args.model!r}")
    example = _example(model, data, res)
    if args.structured:
        from tuili.compress.prune import prune_channels

        if (args.sparsity is None) == (args.flops is None):
            raise ConfigError("--structured needs exactly one of --sparsity (channel fraction) or --flops (FLOPs kept)")
        result = prune_channels(model, example, ratio=args.sparsity, flops_target=args.flops,
                                criterion=args.criterion or "l1", scope=args.scope or "layer", data=data,
                                epochs=args.epochs, lr=args.lr, distill=args.distill, seed=args.seed)
    else:
        from tuili.compress.prune import prune_unstructured

        if args.sparsity is None:
            raise ConfigError("unstructured pruning needs --sparsity S (fraction of weights to zero, in (0, 1))")
        result = prune_unstructured(model, args.sparsity, scope=args.scope or "global", schedule=args.schedule or "oneshot",
                                    steps=args.steps or 4, data=data, epochs=args.epochs, lr=args.lr, distill=args.distill, seed=args.seed)
    export_onnx(result.model, args.output, example)
    print(result.summary())
    if data is not None:
        print(f"test top-1: {100 * accuracy(model, data):.2f}% -> {100 * accuracy(result.model, data):.2f}%")
    print(f"wrote {args.output}")
    return 0
