"""`tuili quantize in.onnx -o out.onnx --calib DATA.npz [--method ...] [--mode static|dynamic|int4]
[--accuracy-budget N [--metric module:fn] [--eval DATA.npz]]`."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize an ONNX model to int8 (QDQ) for onnxruntime and tuili",
                       description="Post-training int8 quantization. static (default): activation ranges from "
                                   "calibration data, Q/DQ around Conv/MatMul/Gemm/Add/pooling/Concat, int8 weights "
                                   "per channel, int32 biases. dynamic: MatMul/Gemm weights int8, activations "
                                   "quantized at run time (Transformers; no calibration data). int4: MatMul/Gemm "
                                   "weights 4-bit per block along K (--block-size), as opset-21 int4 "
                                   "DequantizeLinear or com.microsoft MatMulNBits; --int4-method gptq uses --calib. "
                                   "--accuracy-budget (static): per-layer accuracy and latency are measured and the "
                                   "layers costing the most accuracy per ms saved stay float until the budget is "
                                   "met. The input file is never modified.")
    p.add_argument("model", help="path to the float .onnx model")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized .onnx")
    p.add_argument("--mode", choices=["static", "dynamic", "int4"], default="static",
                   help="static (default), dynamic, or int4 (weight-only)")
    p.add_argument("--calib", metavar="DATA.npz",
                   help="calibration data: an .npz with one array per model input, samples along axis 0 (static)")
    p.add_argument("--random", type=int, metavar="N",
                   help="calibrate on N generated samples from N(0, 1) instead of --calib (a smoke test, not for accuracy)")
    p.add_argument("--method", choices=["mse", "entropy", "percentile", "minmax"],
                   help="how activation ranges are chosen from the calibration statistics (static; default mse)")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor instead of per output channel")
    p.add_argument("--smoothquant", type=float, nargs="?", const=0.5, metavar="ALPHA",
                   help="static: migrate activation outliers into MatMul/Gemm weights first (SmoothQuant; alpha "
                        "default 0.5) — for Transformers whose activations have outlier channels")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="static: leave biases as they are (default: each Conv/Gemm bias absorbs the mean shift its "
                        "weights' rounding causes, measured on the calibration data)")
    rr = p.add_mutually_exclusive_group()
    rr.add_argument("--reduce-range", dest="reduce_range", action="store_const", const=True,
                    help="7-bit weights (default where the CPU has no VNNI/AMX: onnxruntime's u8s8 kernels saturate)")
    rr.add_argument("--no-reduce-range", dest="reduce_range", action="store_const", const=False,
                    help="full 8-bit weights even where the CPU has no VNNI/AMX")
    p.add_argument("--batch", type=int, help="calibration batch size (static; default 16)")
    p.add_argument("--samples", type=int, help="use at most N calibration samples (static)")
    p.add_argument("--exclude", action="append", default=[], metavar="NODE", help="keep this node float (repeatable)")
    g4 = p.add_argument_group("int4 (--mode int4)")
    g4.add_argument("--block-size", type=int, help="weights per block along K: a power of two >= 16 (default 128)")
    g4.add_argument("--zero-points", action="store_true", help="uint4 with a zero point per block (default: symmetric int4)")
    g4.add_argument("--format", dest="int4_format", choices=["dq", "nbits"],
                    help="dq: opset-21 int4 DequantizeLinear (any engine, tuili's included; default); nbits: "
                         "com.microsoft MatMulNBits (onnxruntime only)")
    g4.add_argument("--int4-method", choices=["rtn", "gptq"], help="rounding: rtn (default) or gptq (needs --calib)")
    g4.add_argument("--accuracy-level", type=int, help="MatMulNBits accuracy_level (nbits; 4 = int8 activations)")
    gm = p.add_argument_group("mixed precision by measurement (static)")
    gm.add_argument("--accuracy-budget", type=float, metavar="N",
                    help="with --metric: the allowed drop in metric points; without: the minimum output SNR in dB")
    gm.add_argument("--metric", metavar="MODULE:FN",
                    help="score(outputs: dict name -> array over the --eval set) -> float, higher is better")
    gm.add_argument("--eval", metavar="DATA.npz", help="inputs the score is measured on (default: the calibration data)")
    gm.add_argument("--latency-batch", type=int, help="deployment batch for the latency measurements (default 1)")
    p.set_defaults(func=quantize_command)


def quantize_command(args: argparse.Namespace) -> int:
    from tuili.errors import ConfigError

    mixed = [f"--{k.replace('_', '-')}" for k in ("accuracy_budget", "metric", "eval", "latency_batch")
             if getattr(args, k) is not None]
    int4 = [o for k, o in (("block_size", "--block-size"), ("int4_format", "--format"), ("int4_method", "--int4-method"),
                           ("accuracy_level", "--accuracy-level")) if getattr(args, k) is not None]
    int4 += ["--zero-points"] if args.zero_points else []
    if mixed and (args.mode != "static" or args.accuracy_budget is None):
        raise ConfigError(f"option(s) {', '.join(mixed)} are for static quantization with --accuracy-budget N")
    if int4 and args.mode != "int4":
        raise ConfigError(f"option(s) {', '.join(int4)} are for --mode int4")
    static_only = [o for o, given in (("--no-bias-correction", not args.bias_correction),
                                      ("--smoothquant", args.smoothquant is not None)) if given]
    if static_only and args.mode != "static":
        raise ConfigError(f"option(s) {', '.join(static_only)} are for static quantization (--mode static)")
    if args.mode == "int4":
        report = _int4(args)
    elif args.mode == "dynamic":
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


def _calib_reader(args: argparse.Namespace, required: str):
    from tuili.compress.quant import RandomReader, model_inputs, reader_for
    from tuili.compress.quant.calibrate import DEFAULT_BATCH
    from tuili.compress.quant.prepare import load_model
    from tuili.errors import ConfigError

    if (args.calib is None) == (args.random is None):
        raise ConfigError(f"{required} needs calibration data: give --calib DATA.npz (one array per model input) or "
                          "--random N")
    batch = args.batch or DEFAULT_BATCH
    inputs = model_inputs(load_model(args.model))
    if args.random is not None:
        if args.random < 1:
            raise ConfigError(f"--random {args.random}: give at least one sample")
        return RandomReader(inputs, samples=args.random, batch_size=batch)
    return reader_for(args.calib, inputs, batch, args.samples)


def _static(args: argparse.Namespace):
    from tqdm.auto import tqdm

    from tuili.compress.quant import DEFAULT_METHOD, quantize_mixed, quantize_static
    from tuili.compress.quant.calibrate import DEFAULT_BATCH
    from tuili.compress.quant.ptq import check_paths

    check_paths(args.model, args.output)
    calib = _calib_reader(args, "static quantization")
    kw = dict(method=args.method or DEFAULT_METHOD, per_channel=not args.per_tensor, reduce_range=args.reduce_range,
              exclude=args.exclude, batch_size=args.batch or DEFAULT_BATCH, samples=args.samples,
              bias_correction=args.bias_correction, smooth_alpha=args.smoothquant)
    with tqdm(desc="calibrate", unit="sample", total=calib.samples) as bar:
        if args.accuracy_budget is None:
            return quantize_static(args.model, args.output, calib, progress=bar.update, **kw)
        result = quantize_mixed(args.model, args.output, calib, args.accuracy_budget, metric=args.metric,
                                eval_data=args.eval, latency_batch=args.latency_batch or 1, progress=bar.update, **kw)
    print(result.layer_table())
    return result.report


def _int4(args: argparse.Namespace):
    from tqdm.auto import tqdm

    from tuili.compress.quant import quantize_int4
    from tuili.compress.quant.int4 import DEFAULT_BLOCK
    from tuili.compress.quant.ptq import check_paths
    from tuili.errors import ConfigError

    check_paths(args.model, args.output)
    method = args.int4_method or "rtn"
    extra = [f"--{k.replace('_', '-')}" for k in ("method", "per_tensor", "reduce_range")
             if getattr(args, k) not in (None, False)]
    if extra:
        raise ConfigError(f"option(s) {', '.join(extra)} do not apply to --mode int4 (4-bit weights per block, float "
                          "activations)")
    kw = dict(block_size=args.block_size or DEFAULT_BLOCK, symmetric=not args.zero_points,
              fmt=args.int4_format or "dq", method=method, accuracy_level=args.accuracy_level or 0, exclude=args.exclude)
    if method == "rtn":
        given = [f"--{k}" for k in ("calib", "random", "batch", "samples") if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"option(s) {', '.join(given)}: round-to-nearest int4 takes no calibration data; "
                              "use --int4-method gptq to use it")
        return quantize_int4(args.model, args.output, **kw)
    calib = _calib_reader(args, "--int4-method gptq")
    with tqdm(desc="calibrate", unit="sample", total=calib.samples) as bar:
        return quantize_int4(args.model, args.output, calib=calib, samples=args.samples,
                             batch_size=args.batch or 16, progress=bar.update, **kw)
