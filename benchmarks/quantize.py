"""Quantization benchmark: tuili's static QDQ beside onnxruntime.quantization.quantize_static and NNCF.

Both quantizers get the same model and the same calibration data and write QDQ models with
per-channel int8 weights and uint8 activations (7-bit weights where the CPU has no VNNI/AMX, for
both). The trained CNNs (digits_cnn, glyphs_cnn, trained here by tuili.zoo.train and cached under
``$TUILI_CACHE_DIR/bench_quantize``) calibrate on their TRAIN split and report top-1 accuracy on
their TEST split, never used for calibration. The untrained zoo models (ResNet-18, MobileNetV2:
random weights, so no task metric) report the SNR of their logits against fp32 on random-normal
inputs (calibration on other random-normal inputs). Latency is the median of onnxruntime runs at
batch 1 and 8, int8 and fp32 taking turns (``benchmarks/engine.py``'s interleaved timing).

    .venv/bin/python benchmarks/quantize.py                          # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/quantize.py --models digits_cnn --methods entropy,mse,minmax

``--suite int4`` (bert_small, gpt_small; random weights): int4 weight-only, round-to-nearest and GPTQ, both
formats: quantized-weight bytes, SNR of the outputs against fp32 (gpt_small: also next-token agreement) on
inputs other than the calibration ones, tuili's engine against onnxruntime on the DequantizeLinear model,
and onnxruntime latency at batch 1. ``--suite mixed`` (glyphs_cnn: top-1 budget in points on its test split;
mobilenet_v2: SNR budget): per-layer sensitivity and latency, the layers kept float and the model's latency.

    .venv/bin/python benchmarks/quantize.py --suite int4,mixed

``--suite qat`` (glyphs_cnn by default): for each bit setting (``--qat-bits W/A``: weight / activation bits,
default 8/8, 4/8, 4/4), PTQ (quantize_static, same calibration data; 4-bit weights in int8, 4-bit
activations uint4) beside QAT (tuili.compress.quant.qat: fine-tuned ``--qat-epochs`` epochs on the train
split from the trained model, exported with its learned scales): top-1 on the TEST split in onnxruntime
(uint4 activations at graph optimization level basic), size, and the largest difference between tuili's
engine and onnxruntime on the QAT model (relative to the largest logit).

    .venv/bin/python benchmarks/quantize.py --suite qat

NNCF (optional extra ``tuili[nncf]``) adds a row beside onnxruntime's on the same model and calibration
samples; without it the rows are skipped. ``--suite recognizer --recognizer REC.onnx``: a PaddleOCR
text-line recognizer tuili did not export (``make bench-quantize`` copies PP-OCRv4's out of the
rapidocr-onnxruntime wheel) on text lines rendered here, character accuracy; skipped without the file.

    make bench-quantize                    # static and recognizer suites, with NNCF
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from tuili.bench.timing import time_interleaved

DEFAULT_MODELS = ["digits_cnn", "glyphs_cnn", "resnet18", "mobilenet_v2", "resnet50", "bert_small"]
TRAINED = {"digits_cnn", "glyphs_cnn"}


def trained_model(name: str) -> tuple[Path, object]:
    """(fp32 ONNX, TrainData) of a zoo CNN trained here; the training is cached."""
    from tuili import zoo
    from tuili.data import cache_dir

    out = cache_dir() / "bench_quantize"
    path = out / f"{name}.onnx"
    data = zoo.digits_data(name) if name == "digits_cnn" else zoo.glyphs_data(name)
    if not path.exists():
        zoo.train(name, out_dir=out, progress=True)
    return path, data


def logits(path, x, batch: int = 256) -> np.ndarray:
    sess = session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def snr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - out).astype(np.float64) ** 2).sum()))


def session(path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_quantize(src, dst, calib: dict, batch: int, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.it = iter([{k: v[i:i + batch] for k, v in calib.items()} for i in range(0, n, batch)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)


def have_nncf() -> bool:
    """NNCF is an optional extra (``tuili[nncf]``): its rows are skipped where it is not installed."""
    import importlib.util

    return importlib.util.find_spec("nncf") is not None


def nncf_quantize(src, dst, calib: dict) -> None:
    """NNCF's post-training quantization of the ONNX model on the same calibration samples (one per item:
    NNCF's statistics and bias correction assume batch 1), its defaults otherwise (performance preset:
    symmetric int8 activations, per-channel int8 weights, fast bias correction)."""
    import logging

    import nncf
    import onnx

    logging.getLogger("nncf").setLevel(logging.WARNING)
    n = len(next(iter(calib.values())))
    items = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)]
    onnx.save(nncf.quantize(onnx.load(str(src)), nncf.Dataset(items), subset_size=n), str(dst))


def latency(paths: dict[str, Path], feeds: dict, threads: int, repeat: int, budget: float) -> dict[str, float]:
    sessions = {k: session(p, threads) for k, p in paths.items()}
    fns = {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}
    res = time_interleaved(fns, warmup=3, repeat=repeat, min_repeat=10, budget=budget, settle=0.05)
    return {k: v[0] if isinstance(v, tuple) else float("nan") for k, v in res.items()}


def bench_model(name: str, args, tmp: Path) -> list[dict]:
    from tuili import zoo
    from tuili.compress.quant import quantize_static
    from tuili.compress.quant.ptq import default_reduce_range

    rng = np.random.default_rng(0)
    example = zoo.example_inputs(name, batch=1)
    inp, first = next(iter(example.items()))
    shape = first.shape
    labels = None
    if len(example) > 1 or first.dtype != np.float32:  # token models (BERT): the zoo's example inputs
        src = zoo.export(name, tmp / f"{name}.onnx")
        calib = zoo_feeds(name, args.random_samples, seed=0)
        evalf = zoo_feeds(name, 16, seed=1)

        def logits_of(p):
            return next(iter(outputs(p, evalf).values()))

        def feeds_for(b):
            return zoo_feeds(name, b, seed=2)
    else:
        if name in TRAINED:
            src, data = trained_model(name)
            idx = rng.permutation(len(data.x_train))[:args.calib_samples]
            calib = {inp: data.x_train[np.sort(idx)]}
            evalx, labels = data.x_test, data.y_test
        else:  # random weights: no task metric, SNR on random-normal inputs other than the calibration ones
            src = zoo.export(name, tmp / f"{name}.onnx")
            calib = {inp: rng.standard_normal((args.random_samples, *shape[1:])).astype(np.float32)}
            evalx = np.random.default_rng(1).standard_normal((64, *shape[1:])).astype(np.float32)

        def logits_of(p):
            return logits(p, evalx)

        def feeds_for(b):
            return {inp: np.random.default_rng(2).standard_normal((b, *shape[1:])).astype(np.float32)}
    ref = logits_of(src)

    def score(p) -> tuple[float | None, float]:
        out = ref if p == src else logits_of(p)
        acc = 100 * float((out.argmax(1) == labels).mean()) if labels is not None else None
        return acc, (float("inf") if p == src else snr(ref, out))
    reduce_range = default_reduce_range()
    variants = {"fp32": Path(src)}
    for method in args.methods:
        out = tmp / f"{name}.tuili-{method}.onnx"
        quantize_static(src, out, calib, method=method, batch_size=args.calib_batch, reduce_range=reduce_range)
        variants[f"tuili {method}"] = out
    out = tmp / f"{name}.tuili-{args.methods[0]}-nobc.onnx"  # what bias correction is worth
    quantize_static(src, out, calib, method=args.methods[0], batch_size=args.calib_batch, reduce_range=reduce_range,
                    bias_correction=False)
    variants[f"tuili {args.methods[0]}, no bias correction"] = out
    out = tmp / f"{name}.ort.onnx"
    ort_quantize(src, out, calib, args.calib_batch, reduce_range)
    variants["onnxruntime minmax"] = out
    if have_nncf():
        out = tmp / f"{name}.nncf.onnx"
        nncf_quantize(src, out, calib)
        variants["nncf"] = out
    rows = {k: {"model": name, "quantizer": k, "size": os.path.getsize(p) / 1e6, "score": score(p)}
            for k, p in variants.items()}
    for b in args.batch:
        t = latency(variants, feeds_for(b), args.threads, args.repeat, args.budget)
        for k in variants:
            rows[k][f"b{b}"] = t[k] * 1e3
            rows[k][f"r{b}"] = t[k] / t["fp32"]
    return list(rows.values())


# ------------------------------------------------------------------ a third-party text-line recognizer
LINE_H, LINE_W = 48, 320  # PaddleOCR recognizers' input: 3 x 48 x W, (x / 255 - 0.5) / 0.5, zero padding on the right
LINE_FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf", "STIXGeneral.ttf",
              "DejaVuSerif-Italic.ttf"]
LINE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def text_lines(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` random 4-14 character strings rendered with matplotlib's fonts (size, contrast, noise vary),
    preprocessed as PaddleOCR does: (images N x 3 x 48 x 320, label strings)."""
    import math

    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    x = np.zeros((n, 3, LINE_H, LINE_W), np.float32)
    labels = []
    for i in range(n):
        text = "".join(rng.choice(list(LINE_CHARS), int(rng.integers(4, 15))))
        font = ImageFont.truetype(str(fonts / LINE_FONTS[i % len(LINE_FONTS)]), int(rng.integers(28, 40)))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(3, 10))
        img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), int(rng.integers(200, 256)))
        ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=int(rng.integers(0, 70)), font=font)
        noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (img.height, img.width))
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        w = min(LINE_W, math.ceil(LINE_H * img.width / img.height))
        x[i, :, :, :w] = np.asarray(img.resize((w, LINE_H), Image.BILINEAR), np.float32) / 127.5 - 1.0
        labels.append(text)
    return x, labels


def ctc_alphabet(path) -> list[str]:
    """CTC classes of a PaddleOCR recognizer: blank, its dictionary (model metadata 'character'), space."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    if "character" not in meta:
        raise SystemExit(f"{path}: no 'character' metadata; expected a PaddleOCR recognizer (rapidocr's wheels)")
    return ["<blank>", *meta["character"].splitlines(), " "]


def ctc_decode(probs: np.ndarray, alphabet: list[str]) -> list[str]:
    out = []
    for seq in probs.argmax(-1):
        keep = np.r_[True, seq[1:] != seq[:-1]] & (seq != 0)  # collapse repeats, drop blanks
        out.append("".join(alphabet[k] for k in seq[keep]))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(preds: list[str], labels: list[str]) -> float:
    """100 * (1 - edit distance / label characters), summed over the lines."""
    return 100 * (1 - sum(map(edit_distance, preds, labels)) / sum(map(len, labels)))


def bench_recognizer(args, tmp: Path) -> list[dict] | None:
    """A PaddleOCR text-line recognizer that tuili did not export (``--recognizer``: e.g. rapidocr-onnxruntime's
    ch_PP-OCRv4_rec_infer.onnx): fp32, tuili default (static), tuili mixed precision by measurement (character
    accuracy on a tuning set of other lines, budget ``--ocr-budget`` points, latency at batch 1),
    onnxruntime's static QDQ (uint8 activations, per-channel int8 weights) and NNCF, each on the file as
    shipped and on the float graph after tuili's preparation; character accuracy on
    rendered lines used neither for calibration nor tuning, latency in onnxruntime."""
    from tuili.compress.quant import quantize_mixed, quantize_static
    from tuili.compress.quant.prepare import load_model, prepare
    from tuili.compress.quant.ptq import default_reduce_range

    src = Path(args.recognizer or "")
    if not src.is_file():
        print(f"\nrecognizer suite skipped: no model at --recognizer {str(src)!r} (copy ch_PP-OCRv4_rec_infer.onnx "
              "out of the rapidocr-onnxruntime wheel)")
        return None
    alphabet = ctc_alphabet(src)
    inp = session(src).get_inputs()[0].name
    calib = {inp: text_lines(args.ocr_calib, seed=0)[0]}
    tune_x, tune_y = text_lines(args.ocr_tune, seed=2)
    eval_x, eval_y = text_lines(args.ocr_eval, seed=1)

    def accuracy(outs: dict[str, np.ndarray], labels) -> float:
        return char_accuracy(ctc_decode(next(iter(outs.values())), alphabet), labels)

    def score(p) -> tuple[float, float]:
        probs = logits(p, eval_x, batch=16)
        return char_accuracy(ctc_decode(probs, alphabet), eval_y), probs
    rr = default_reduce_range()
    variants = {"fp32": src, "tuili static (default)": tmp / "rec.tuili.onnx",
                f"tuili mixed (budget {args.ocr_budget} pt)": tmp / "rec.mixed.onnx"}
    quantize_static(src, variants["tuili static (default)"], calib, batch_size=args.calib_batch)
    mixed = quantize_mixed(src, variants[f"tuili mixed (budget {args.ocr_budget} pt)"], calib, args.ocr_budget,
                           metric=lambda outs: accuracy(outs, tune_y), eval_data={inp: tune_x},
                           latency_batch=args.latency_batch, threads=args.threads, batch_size=args.calib_batch)
    print("\n### recognizer: mixed precision\n\n```\n" + mixed.summary() + "\n```")
    # The anchors take the file as shipped (opset 12, weights in Constant nodes), and also the float graph
    # tuili quantizes (its passes: folded constants, shapes, opset 13), so that neither is judged on preparation alone.
    prepared = tmp / "rec.prepared.onnx"
    prepare(load_model(src))[0].save(str(prepared))
    for tag, model in (("", src), (" (tuili-prepared input)", prepared)):
        variants["onnxruntime static QDQ" + tag] = tmp / f"rec.ort{len(tag)}.onnx"
        ort_quantize(model, variants["onnxruntime static QDQ" + tag], calib, args.calib_batch, rr)
        if have_nncf():
            variants["nncf" + tag] = tmp / f"rec.nncf{len(tag)}.onnx"
            nncf_quantize(model, variants["nncf" + tag], calib)
    ref = None
    rows = {}
    for k, p in variants.items():
        acc, probs = score(p)
        ref = probs if ref is None else ref
        rows[k] = {"model": src.stem, "quantizer": k, "size": os.path.getsize(p) / 1e6,
                   "score": (acc, float("inf") if k == "fp32" else snr(ref, probs))}
    for b in args.batch:
        t = latency(variants, {inp: eval_x[:b]}, args.threads, args.repeat, args.budget)
        for k in variants:
            rows[k][f"b{b}"] = t[k] * 1e3
            rows[k][f"r{b}"] = t[k] / t["fp32"]
    return list(rows.values())


def zoo_feeds(name: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    from tuili import zoo

    return zoo.example_inputs(name, batch=batch, seed=seed)


def outputs(path, feeds: dict, optimize: bool = True) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def bench_int4(name: str, args, tmp: Path) -> list[dict]:
    """int4 variants of a zoo Transformer: weight bytes, SNR, next-token agreement, tuili vs onnxruntime, latency."""
    import tuili
    from tuili import zoo
    from tuili.compress.quant import ArrayReader, quantize_int4
    from tuili.compress.quant.sensitivity import snr_db

    src = zoo.export(name, tmp / f"{name}.onnx")
    calib = ArrayReader(zoo_feeds(name, args.int4_calib, seed=0), batch_size=8)
    evalf = zoo_feeds(name, 8, seed=1)
    ref = outputs(src, evalf)
    main = next(iter(ref))  # logits / last_hidden_state
    variants = {"fp32": (Path(src), None)}
    for fmt, block, sym, method in [("dq", 128, True, "rtn"), ("dq", 128, False, "rtn"), ("dq", 32, True, "rtn"),
                                    ("dq", 128, True, "gptq"), ("dq", 32, True, "gptq"), ("nbits", 128, True, "rtn"),
                                    ("nbits", 32, True, "rtn")]:
        label = f"int4 {fmt} b{block} {'sym' if sym else 'zp'} {method}"
        out = tmp / f"{name}.{fmt}{block}{sym}{method}.onnx"
        r = quantize_int4(src, out, block_size=block, symmetric=sym, fmt=fmt, method=method,
                          calib=calib if method == "gptq" else None)
        variants[label] = (out, r)
    rows = []
    b1 = zoo_feeds(name, 1, seed=2)
    lat = latency({k: p for k, (p, _) in variants.items()}, b1, args.threads, args.repeat, args.budget)
    for label, (path, r) in variants.items():
        row = {"model": name, "variant": label, "b1": lat[label] * 1e3, "r1": lat[label] / lat["fp32"]}
        if r is not None:
            out = outputs(path, evalf)
            row.update(weights=f"{r.weight_bytes_before / 1e6:.1f} -> {r.weight_bytes_after / 1e6:.2f}",
                       ratio=r.weight_bytes_before / r.weight_bytes_after, snr=snr_db({main: ref[main]}, {main: out[main]}),
                       seconds=r.seconds)
            if name.startswith("gpt"):
                row["agree"] = 100 * float((out[main].argmax(-1) == ref[main].argmax(-1)).mean())
            if r.settings["format"] == "dq":  # tuili's engine runs it; onnxruntime unfused is the exact reference
                exact = outputs(path, b1, optimize=False)[main]
                mine = tuili.InferenceSession(str(path)).run([main], b1)[0]
                fused = outputs(path, b1)[main]
                scale = float(np.abs(exact).max())
                row["tuili"] = f"{np.abs(mine - exact).max() / scale:.1e} / {np.abs(mine - fused).max() / scale:.1e}"
        rows.append(row)
    return rows


def int4_table(rows: list[dict]) -> str:
    head = ["model", "variant", "weights MB", "smaller", "SNR dB", "next-token agree %", "tuili vs ort exact / fused",
            "b1 ms", "b1 / fp32", "quantize s"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["model"], r["variant"], r.get("weights", ""), f"{r['ratio']:.2f}x" if "ratio" in r else "",
                 f"{r['snr']:.1f}" if "snr" in r else "", f"{r['agree']:.1f}" if "agree" in r else "",
                 r.get("tuili", ""), f"{r['b1']:.2f}", f"{r['r1']:.2f}x", f"{r['seconds']:.1f}" if "seconds" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_mixed(name: str, args, tmp: Path):
    """quantize_mixed on a zoo CNN: glyphs_cnn with a top-1 budget (points), others with an SNR budget."""
    from tuili import zoo
    from tuili.compress.quant import quantize_mixed

    rng = np.random.default_rng(0)
    (inp, example), = zoo.example_inputs(name, batch=1).items()
    if name in TRAINED:
        src, data = trained_model(name)
        calib = {inp: data.x_train[np.sort(rng.permutation(len(data.x_train))[:args.calib_samples])]}
        evalx, labels = {inp: data.x_test}, data.y_test

        def metric(outs):
            return 100 * float((outs["logits"].argmax(1) == labels).mean())
        budget = args.top1_budget
    else:
        src = zoo.export(name, tmp / f"{name}.onnx")
        calib = {inp: rng.standard_normal((args.random_samples, *example.shape[1:])).astype(np.float32)}
        evalx = {inp: np.random.default_rng(1).standard_normal((16, *example.shape[1:])).astype(np.float32)}
        metric, budget = None, args.snr_budget
    return quantize_mixed(src, tmp / f"{name}.mixed.onnx", calib, budget, metric=metric, eval_data=evalx,
                          latency_batch=args.latency_batch, threads=args.threads)


def bench_qat(name: str, args, tmp: Path) -> list[dict]:
    """fp32 / PTQ / QAT top-1 and size of trained zoo CNN ``name`` at each --qat-bits setting."""
    import time

    import onnxruntime as ort

    import tuili
    from tuili.compress.quant import export_qat, finetune_qat, prepare_qat, quantize_static
    from tuili.zoo.training import load_checkpoint

    src, data = trained_model(name)
    rng = np.random.default_rng(0)
    calib = data.x_train[np.sort(rng.permutation(len(data.x_train))[:args.calib_samples])]

    def top1(path, basic: bool = False) -> float:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if basic:  # onnxruntime's QDQ fusion turns uint4 activations into an invalid QLinearConv
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        out = np.concatenate([sess.run(None, {"input": data.x_test[i:i + 512]})[0]
                              for i in range(0, len(data.x_test), 512)])
        return 100 * float((out.argmax(1) == data.y_test).mean())

    rows = [{"model": name, "bits": "32/32", "variant": "fp32", "size": os.path.getsize(src), "top1": top1(src)}]
    for setting in args.qat_bits:
        wb, ab = (int(b) for b in setting.split("/"))
        four_act = ab == 4
        ptq = tmp / f"{name}.ptq.w{wb}a{ab}.onnx"
        quantize_static(src, ptq, {"input": calib}, batch_size=args.calib_batch, weight_bits=wb,
                        activation_type="uint4" if four_act else "uint8", reduce_range=False if wb < 8 else None)
        rows.append({"model": name, "bits": setting, "variant": "PTQ (quantize_static)", "size": os.path.getsize(ptq),
                     "top1": top1(ptq, four_act)})
        t0 = time.perf_counter()
        qm = prepare_qat(load_checkpoint(src.with_suffix(".pt")), calib, weight_bits=wb, activation_bits=ab)
        finetune_qat(qm, data, epochs=args.qat_epochs, samples=args.qat_samples, lr=args.qat_lr, seed=0)
        qat = tmp / f"{name}.qat.w{wb}a{ab}.onnx"
        export_qat(qm, qat, calib, batch_size=args.calib_batch)
        x = data.x_test[:256]
        fused = session(qat).run(None, {"input": x})[0] if not four_act else None
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ref = ort.InferenceSession(str(qat), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        mine = tuili.InferenceSession(str(qat)).run(None, {"input": x})[0]
        scale = float(np.abs(ref).max())
        agree = f"{np.abs(mine - ref).max() / scale:.1e}"
        if fused is not None:
            agree += f" / {np.abs(mine - fused).max() / scale:.1e}"
        rows.append({"model": name, "bits": setting, "variant": f"QAT ({args.qat_epochs} ep)", "size": os.path.getsize(qat),
                     "top1": top1(qat, four_act), "agree": agree, "seconds": time.perf_counter() - t0})
    return rows


def qat_table(rows: list[dict]) -> str:
    head = ["model", "W/A bits", "variant", "size kB", "top-1 %", "drop pt", "tuili vs ort exact / fused", "QAT s"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * 3 + "---|---:|"]
    base = {r["model"]: r["top1"] for r in rows if r["variant"] == "fp32"}
    for r in rows:
        drop = "" if r["variant"] == "fp32" else f"{base[r['model']] - r['top1']:.2f}"
        lines.append("| " + " | ".join([r["model"], r["bits"], r["variant"], f"{r['size'] / 1e3:.1f}", f"{r['top1']:.2f}",
                                        drop, r.get("agree", ""), f"{r['seconds']:.0f}" if "seconds" in r else ""]) + " |")
    return "\n".join(lines)


def table(rows: list[dict], batches: list[int]) -> str:
    head = ["model", "quantizer", "size MB", "top-1 %", "drop pt", "SNR dB"]
    for b in batches:
        head += [f"b{b} ms", f"b{b} / fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    base: dict[str, float] = {}
    for r in rows:
        acc, db = r["score"]
        if r["quantizer"] == "fp32":
            base[r["model"]] = acc
        top1 = "n/a (untrained)" if acc is None else f"{acc:.2f}"
        drop = "" if acc is None or r["quantizer"] == "fp32" else f"{base[r['model']] - acc:.2f}"
        cells = [r["model"], r["quantizer"], f"{r['size']:.2f}", top1, drop, "" if db == float("inf") else f"{db:.1f}"]
        for b in batches:
            cells += [f"{r[f'b{b}']:.2f}", f"{r[f'r{b}']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--methods", default="entropy,mse,percentile,minmax", help="tuili calibration methods to run")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--calib-samples", type=int, default=1024, help="train-split samples for the trained CNNs")
    ap.add_argument("--random-samples", type=int, default=64, help="random-normal calibration samples (untrained)")
    ap.add_argument("--calib-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed runs per variant and batch")
    ap.add_argument("--suite", default="static",
                    help="static (the table above), int4, mixed, qat, recognizer; comma-separated")
    ap.add_argument("--int4-models", default="bert_small,gpt_small")
    ap.add_argument("--int4-calib", type=int, default=32, help="calibration samples for GPTQ (zoo example inputs)")
    ap.add_argument("--mixed-models", default="glyphs_cnn,mobilenet_v2")
    ap.add_argument("--top1-budget", type=float, default=0.3, help="allowed top-1 drop (points), trained CNNs")
    ap.add_argument("--snr-budget", type=float, default=20.0, help="minimum SNR (dB), untrained CNNs")
    ap.add_argument("--latency-batch", type=int, default=1, help="deployment batch of the mixed-precision search")
    ap.add_argument("--qat-models", default="glyphs_cnn")
    ap.add_argument("--qat-bits", default="8/8,4/8,4/4", help="weight/activation bits, comma-separated (qat suite)")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--qat-samples", type=int, help="training samples per QAT epoch (default: the whole train split)")
    ap.add_argument("--qat-lr", type=float, default=5e-4)
    ap.add_argument("--recognizer", metavar="REC.onnx",
                    help="recognizer suite: a PaddleOCR text-line recognizer (e.g. ch_PP-OCRv4_rec_infer.onnx from the "
                         "rapidocr-onnxruntime wheel); the suite is skipped without it")
    ap.add_argument("--ocr-calib", type=int, default=64, help="rendered lines to calibrate on (recognizer)")
    ap.add_argument("--ocr-tune", type=int, default=64, help="rendered lines the mixed-precision search scores")
    ap.add_argument("--ocr-eval", type=int, default=200, help="rendered lines the table's accuracy is measured on")
    ap.add_argument("--ocr-budget", type=float, default=0.5, help="allowed character-accuracy drop (points)")
    args = ap.parse_args(argv)
    suites = set(args.suite.split(","))
    unknown = suites - {"static", "int4", "mixed", "qat", "recognizer"}
    if unknown:
        ap.error(f"unknown suite(s) {sorted(unknown)}: use static, int4, mixed, qat, recognizer")
    args.qat_bits = [b for b in args.qat_bits.split(",") if b]
    args.methods = [m for m in args.methods.split(",") if m]
    args.batch = [int(b) for b in args.batch.split(",")]
    import onnxruntime

    from tuili.compress.quant.ptq import default_reduce_range
    from tuili.runtime.cpu import info

    print(f"CPU: {info().describe()}; onnxruntime {onnxruntime.__version__}, {args.threads} threads; "
          f"weights {'7-bit (reduce_range)' if default_reduce_range() else '8-bit'}; "
          f"{'nncf ' + _nncf_version() if have_nncf() else 'nncf not installed (its rows skipped)'}; {_dt.date.today()}")
    print(f"command: python benchmarks/quantize.py {shlex.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    with tempfile.TemporaryDirectory() as d:
        if "static" in suites:
            rows = []
            for name in args.models.split(","):
                rows += bench_model(name, args, Path(d))
            print()
            print(table(rows, args.batch))
        if "int4" in suites:
            rows = []
            for name in args.int4_models.split(","):
                rows += bench_int4(name, args, Path(d))
            print()
            print(int4_table(rows))
        if "mixed" in suites:
            for name in args.mixed_models.split(","):
                result = bench_mixed(name, args, Path(d))
                print(f"\n### {name}\n")
                print("```\n" + result.summary() + "\n```\n")
                print(result.layer_table())
        if "qat" in suites:
            rows = []
            for name in args.qat_models.split(","):
                if name not in TRAINED:
                    ap.error(f"--qat-models: {name} is not one of the trained CNNs ({', '.join(sorted(TRAINED))})")
                rows += bench_qat(name, args, Path(d))
            print()
            print(qat_table(rows))
        if "recognizer" in suites:
            rows = bench_recognizer(args, Path(d))
            if rows:
                print()
                print(table(rows, args.batch).replace("top-1 %", "char acc %"))
    return 0


def _nncf_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("nncf")


if __name__ == "__main__":
    sys.exit(main())
