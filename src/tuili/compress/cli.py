"""`tuili quantize in.onnx -o out.onnx --calib DATA.npz [--method ...] [--mode static|dynamic]`."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize an ONNX model to int8 (QDQ) for onnxruntime and tuili",
                       description="Post-training int8 quantization. static (default): activation ranges from "
                                   "calibration data, Q/DQ around Conv/MatMul/Gemm/Add/pooling/Concat, int8 weights "
                                   "per channel, int32 biases. dynamic: MatMul/Gemm weights int8, activations "
                                   "quantized at run time (Transformers; no calibration data). The input file is "
                                   "never modified.")
    p.add_argument("model", help="path to the float .onnx model")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized .onnx")
    p.add_argument("--mode", choices=["static", "dynamic"], default="static", help="static (default) or dynamic")
    p.add_argument("--calib", metavar="DATA.npz",
                   help="calibration data: an .npz with one array per model input, samples along axis 0 (static)")
    p.add_argument("--random", type=int, metavar="N",
                   help="calibrate on N generated samples from N(0, 1) instead of --calib (a smoke test, not for accuracy)")
    p.add_argument("--method", choices=["mse", "entropy", "percentile", "minmax"],
                   help="how activation ranges are chosen from the calibration statistics (static; default mse)")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor instead of per output channel")
    rr = p.add_mutually_exclusive_group()
    rr.add_argument("--reduce-range", dest="reduce_range", action="store_const", const=True,
                    help="7-bit weights (default where the CPU has no VNNI/AMX: onnxruntime's u8s8 kernels saturate)")
    rr.add_argument("--no-reduce-range", dest="reduce_range", action="store_const", const=False,
                    help="full 8-bit weights even where the CPU has no VNNI/AMX")
    p.add_argument("--batch", type=int, help="calibration batch size (static; default 16)")
    p.add_argument("--samples", type=int, help="use at most N calibration samples (static)")
    p.add_argument("--exclude", action="append", default=[], metavar="NODE", help="keep this node float (repeatable)")
    p.set_defaults(func=quantize_command)


def quantize_command(args: argparse.Namespace) -> int:
    from tuili.errors import ConfigError

    if args.mode == "dynamic":
        given = [f"--{k.replace('_', '-')}" for k in ("calib", "random", "method", "batch", "samples")
                 if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"option(s) {', '.join(given)} are for static quantization: dynamic mode computes "
                              "activation scales at run time and takes no calibration data")
        from tuili.compress.quant import quantize_dynamic

        report = quantize_dynamic(args.model, args.output, per_channel=not args.per_tensor,
                                  reduce_range=args.reduce_range, exclude=args.exclude)
    else:
        report = _static(args)
    print(report.summary())
    return 0


def _static(args: argparse.Namespace):
    from tqdm.auto import tqdm

    from tuili.compress.quant import DEFAULT_METHOD, RandomReader, model_inputs, quantize_static, reader_for
    from tuili.compress.quant.calibrate import DEFAULT_BATCH
    from tuili.compress.quant.prepare import load_model
    from tuili.compress.quant.ptq import check_paths
    from tuili.errors import ConfigError

    check_paths(args.model, args.output)
    if (args.calib is None) == (args.random is None):
        raise ConfigError("static quantization needs calibration data: give --calib DATA.npz (one array per model "
                          "input) or --random N")
    batch = args.batch or DEFAULT_BATCH
    inputs = model_inputs(load_model(args.model))
    if args.random is not None:
        if args.random < 1:
            raise ConfigError(f"--random {args.random}: give at least one sample")
        calib = RandomReader(inputs, samples=args.random, batch_size=batch)
    else:
        calib = reader_for(args.calib, inputs, batch, args.samples)
    with tqdm(desc="calibrate", unit="sample", total=calib.samples) as bar:
        return quantize_static(args.model, args.output, calib, method=args.method or DEFAULT_METHOD,
                               per_channel=not args.per_tensor, reduce_range=args.reduce_range, exclude=args.exclude,
                               batch_size=batch, samples=args.samples, progress=bar.update)
