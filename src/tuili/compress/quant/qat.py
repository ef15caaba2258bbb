"""Quantization-aware training (QAT) in torch, exported to the same QDQ ONNX as :func:`quantize_static`.

    qm = prepare_qat(model, calib_x, weight_bits=4)       # a fake-quant deep copy; ``model`` is untouched
    finetune_qat(qm, data, epochs=2)                       # data: tuili.zoo.training.TrainData
    report = export_qat(qm, "m.qat.onnx", calib_x)         # QDQ ONNX with the LEARNED scales

What the fake-quant copy simulates, so that training sees the numbers the exported model computes:
- BatchNorm folded into the Conv before it (its running statistics), as the exported model has it:
  the weights QAT quantizes are the weights exported. Other BatchNorms stay, frozen in eval mode.
- weights of every Conv/Linear: symmetric, per output channel, on ``weight_bits`` (2..8) bits
  ([-7, 7] for 4 bits), with a learned scale per channel (LSQ, Esser et al. 2020), its gradient scaled
  by 1 / sqrt(N Qp) (N: weights per channel); initialised at the clipping with the least squared error
  (``weight_init="mse"``; LSQ's 2 mean|w| / sqrt(Qp) is ``"lsq"``, worse for short fine-tunes).
- the input of every Conv/Linear: per tensor, unsigned asymmetric (uint8, or uint4 for 4 bits) with a
  learned scale (LSQ gradient scaling, N: features per sample) and zero point (LSQ+, Bhalgat et al.
  2020), both initialised by a short calibration with tuili's observers (MSE by default). The zero
  point is rounded to an integer in every forward pass, so the exported integer is the trained one;
  a tensor that calibrates non-negative (after a ReLU, an image) keeps zero point 0, fixed, so the
  export can fold the ReLU into the quantizer's clamp. Layers reading the same tensor share one quantizer.
- round with a straight-through estimator (gradient 1); the clamp passes no gradient outside the range.

Export: the float model (BatchNorm folded, latent weights) goes through ``torch.onnx.export``, whose
node names carry the module path (``/features/features.0/features.0.0/Conv``); each QAT layer is
matched to its Conv/MatMul/Gemm node, and the learned scales go into tuili's QDQ rewrite (ptq.Calibrated,
qdq.rewrite) as given parameters: int8 (or int4) weights per channel, int32 biases. Tensors the format
quantizes and QAT did not learn (e.g. a Conv output feeding pooling or an Add) are calibrated on
``calib`` as quantize_static would; bias correction is off (training already corrected the rounding).
4-bit weights are stored int8 by default (onnxruntime's int8 kernels run them) or int4
(``weight_type="int4"``, opset 21, half the bytes); 4-bit activations are uint4 (opset 21), which
onnxruntime runs with graph optimizations at basic level (its QDQ fusion emits an invalid uint4
QLinearConv at higher levels, onnxruntime 1.32) and tuili's engine runs as is.
"""
from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Iterator, Mapping

import numpy as np

from tuili.errors import ConfigError, InvalidInputError
from tuili.ir import Graph, Node, load

from . import qdq
from .observers import OBSERVERS, make_observer
from .prepare import FOUR_BIT_OPSET, MIN_OPSET, prepare
from .ptq import DEFAULT_METHOD, Calibrated, default_reduce_range, static_report
from .qparams import QType, qtype, scale_zero_point
from .report import Report

log = logging.getLogger(__name__)

ACTIVATION_TYPES = {8: "uint8", 4: "uint4"}  # activation bits -> storage type (exact clamp in ONNX)
WEIGHT_INITS = ("lsq", "mse")  # how weight scales start: LSQ's 2 mean|w| / sqrt(Qp), or the least-error clipping
EXPORT_OPSET = 17  # the TorchScript exporter's; prepare() raises it to 21 for 4-bit types
TINY = float(np.finfo(np.float32).tiny)


def _round_ste(x):
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (x.round() - x).detach()


def _grad_scale(x, g: float):
    """x forward, gradient scaled by g backward (LSQ's step-size gradient scale)."""
    return x * g + (x - x * g).detach()


def _module_classes():
    import torch
    from torch import nn

    class WeightFakeQuant(nn.Module):
        """Symmetric per-output-channel weight quantizer with learned scales (LSQ)."""

        def __init__(self, weight: torch.Tensor, qt: QType, init: str = "mse"):
            super().__init__()
            self.qmin, self.qmax = qt.qmin, qt.qmax
            w = weight.detach().reshape(weight.shape[0], -1)
            if init == "lsq":
                scale = 2 * w.abs().mean(1) / math.sqrt(qt.qmax)
            else:  # "mse": per channel, the clipping of max|w| with the least squared rounding + clipping error
                cand = w.abs().amax(1, keepdim=True) / qt.qmax * torch.linspace(0.2, 1.0, 81)  # [C, 81]
                q = torch.clamp(torch.round(w[:, None, :] / cand[..., None]), qt.qmin, qt.qmax) * cand[..., None]
                scale = cand.gather(1, ((q - w[:, None, :]) ** 2).sum(-1).argmin(1, keepdim=True))[:, 0]
            self.scale = nn.Parameter(scale.clamp_min(1e-8).float())
            self.grad_factor = 1.0 / math.sqrt(weight[0].numel() * qt.qmax)

        def forward(self, w):
            s = _grad_scale(self.scale.clamp_min(TINY), self.grad_factor).reshape(-1, *[1] * (w.dim() - 1))
            return torch.clamp(_round_ste(w / s), self.qmin, self.qmax) * s

        def exported(self) -> np.ndarray:
            return self.scale.detach().clamp_min(TINY).numpy().astype(np.float32)

    class ActFakeQuant(nn.Module):
        """Per-tensor asymmetric activation quantizer: learned scale and integer zero point (LSQ+)."""

        def __init__(self, qt: QType, scale: float, zero_point: int, learn_zero_point: bool):
            super().__init__()
            self.qmin, self.qmax, self.type_name = qt.qmin, qt.qmax, qt.name
            self.scale = nn.Parameter(torch.tensor(float(scale)))
            self.zero_point = nn.Parameter(torch.tensor(float(zero_point)), requires_grad=learn_zero_point)

        def forward(self, x):
            g = 1.0 / math.sqrt(max(x[0].numel(), 1) * self.qmax)
            s = _grad_scale(self.scale.clamp_min(TINY), g)
            z = torch.clamp(_round_ste(_grad_scale(self.zero_point, g)), self.qmin, self.qmax)
            return (torch.clamp(_round_ste(x / s) + z, self.qmin, self.qmax) - z) * s

        def exported(self) -> tuple[np.float32, np.ndarray]:
            z = int(np.clip(round(float(self.zero_point.detach())), self.qmin, self.qmax))
            return np.float32(self.scale.detach().clamp_min(TINY)), np.asarray(z)

    class QATLayer(nn.Module):
        """A Conv or Linear computing on its fake-quantized input and weight; ``layer`` is the float module
        (with the latent weights) that the export writes."""

        def __init__(self, layer: nn.Module, act: ActFakeQuant, weight_quant: WeightFakeQuant):
            super().__init__()
            self.layer, self.act, self.weight_quant = layer, act, weight_quant

        def forward(self, x):
            w = self.weight_quant(self.layer.weight)
            x = self.act(x)
            if isinstance(self.layer, nn.Linear):
                return nn.functional.linear(x, w, self.layer.bias)
            return self.layer._conv_forward(x, w, self.layer.bias)

    class QATModel(nn.Module):
        """The fake-quant copy :func:`prepare_qat` returns: ``model`` (the user's module, BatchNorm folded,
        Conv/Linear wrapped in :class:`QATLayer`) and its settings."""

        def __init__(self, model: nn.Module, settings: dict):
            super().__init__()
            self.model = model
            self.settings = settings

        def forward(self, *args, **kwargs):
            return self.model(*args, **kwargs)

        def qat_layers(self) -> dict[str, QATLayer]:
            return {n: m for n, m in self.model.named_modules() if isinstance(m, QATLayer)}

        def float_model(self) -> nn.Module:
            """A float copy with each QATLayer replaced by its layer (the module paths of the original)."""
            m = copy.deepcopy(self.model)
            for name in [n for n, x in m.named_modules() if isinstance(x, QATLayer)]:
                _set_module(m, name, _get_module(m, name).layer)
            return m.eval()

        def train(self, mode: bool = True):
            super().train(mode)
            for m in self.model.modules():  # BatchNorm statistics stay frozen (not folded ones included)
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            return self

    return WeightFakeQuant, ActFakeQuant, QATLayer, QATModel


_CLASSES = None


def _classes():
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _module_classes()
    return _CLASSES


def _get_module(root, path: str):
    return root.get_submodule(path) if path else root


def _set_module(root, path: str, module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get_module(root, parent), leaf, module)


# ------------------------------------------------------------------------------------- prepare
def check_bits(weight_bits: int, activation_bits: int, weight_type: str) -> tuple[QType, QType]:
    """(weight QType, activation QType) for the requested bits, or a ConfigError saying what is possible."""
    if int(weight_bits) != weight_bits or not 2 <= weight_bits <= 8:
        raise ConfigError(f"weight_bits={weight_bits}: QAT quantizes weights to 2..8 bits")
    if activation_bits not in ACTIVATION_TYPES:
        raise ConfigError(f"activation_bits={activation_bits}: activations are quantized to 8 bits (uint8) or 4 bits "
                          "(uint4, opset 21): ONNX QuantizeLinear clamps only at its storage type's limits")
    if weight_type not in ("int8", "int4"):
        raise ConfigError(f"weight_type={weight_type!r}: weights are stored 'int8' or 'int4'")
    if weight_type == "int4" and weight_bits > 4:
        raise ConfigError(f"weight_type='int4' holds at most 4 bits, weight_bits is {weight_bits}")
    return qtype(weight_type, symmetric=True, bits=weight_bits), qtype(ACTIVATION_TYPES[activation_bits])


def fold_batchnorm(model) -> int:
    """Fold every BatchNorm that directly follows a Conv (found with torch.fx, else in Sequentials) into
    that Conv, in place; the BatchNorm becomes an Identity. Returns how many were folded."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs: list[tuple[str, str]] = []
    try:
        traced = torch.fx.symbolic_trace(model)
        mods = dict(model.named_modules())
        for node in traced.graph.nodes:
            if node.op == "call_module" and isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
                src = node.args[0]
                if (getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), nn.modules.conv._ConvNd)
                        and len(src.users) == 1):
                    pairs.append((src.target, node.target))
    except Exception as e:  # data-dependent control flow: fall back to Conv, BatchNorm neighbours in Sequentials
        log.debug("torch.fx cannot trace %s (%s); folding BatchNorm in Sequentials only", type(model).__name__, e)
        for name, seq in model.named_modules():
            if isinstance(seq, nn.Sequential):
                keys = list(seq._modules)
                for a, b in zip(keys, keys[1:], strict=False):
                    if isinstance(seq._modules[a], nn.modules.conv._ConvNd) and \
                            isinstance(seq._modules[b], nn.modules.batchnorm._BatchNorm):
                        pairs.append((f"{name}.{a}" if name else a, f"{name}.{b}" if name else b))
    for conv, bn in pairs:
        c, b = _get_module(model, conv), _get_module(model, bn)
        if c.transposed or b.num_features != c.out_channels or b.running_mean is None:
            continue
        _set_module(model, conv, fuse_conv_bn_eval(c.eval(), b.eval()))
        _set_module(model, bn, nn.Identity())
    return len(pairs)


def _as_batches(calib, what: str, batch_size: int = 64) -> tuple[str | None, np.ndarray]:
    """(input name or None, float32 samples) from an array, a torch tensor or a one-entry dict."""
    name = None
    if isinstance(calib, Mapping):
        if len(calib) != 1:
            raise InvalidInputError(f"{what}: QAT takes models with one input; got arrays for {sorted(calib)}")
        (name, calib), = calib.items()
    try:
        x = np.asarray(calib.detach().cpu().numpy() if hasattr(calib, "detach") else calib, np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what}: expected an array of samples (samples along axis 0), got "
                                f"{type(calib).__name__}: {e}") from e
    if x.ndim < 2 or len(x) == 0:
        raise InvalidInputError(f"{what}: give at least one sample, samples along axis 0 (got shape {x.shape})")
    return name, x


def _batches(x: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


def prepare_qat(model, calib, *, weight_bits: int = 8, activation_bits: int = 8, weight_type: str = "int8",
                method: str = DEFAULT_METHOD, weight_init: str = "mse", reduce_range: bool | None = None,
                batch_size: int = 64, samples: int | None = 512):
    """A fake-quant deep copy of torch ``model`` (never modified) for quantization-aware training.

    ``calib``: samples (array or tensor, samples along axis 0; or {input name: array}) that initialise the
    activation quantizers with observer ``method`` (at most ``samples`` of them). ``weight_bits`` 2..8,
    ``activation_bits`` 8 or 4; ``weight_type`` "int8" (default) or "int4" stores the weights on export.
    ``weight_init``: "mse" (each channel's least-error clipping, default) or "lsq" (2 mean|w| / sqrt(Qp)).
    ``reduce_range=None`` keeps 7-bit weights at 8 bits where the CPU lacks VNNI/AMX, as quantize_static."""
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ConfigError(f"QAT needs a torch nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError("QAT cannot train a TorchScript module (scripted or traced models are for inference only): "
                          "pass the Python nn.Module it was made from")
    if method not in OBSERVERS:
        raise ConfigError(f"unknown calibration method {method!r}; use one of {', '.join(OBSERVERS)}")
    if weight_init not in WEIGHT_INITS:
        raise ConfigError(f"unknown weight_init {weight_init!r}; use one of {', '.join(WEIGHT_INITS)}")
    rr = default_reduce_range() if reduce_range is None else bool(reduce_range)
    wq, aq = check_bits(weight_bits, activation_bits, weight_type)
    if rr and weight_bits == 8:
        wq = qtype(weight_type, symmetric=True, reduce_range=True)
    WeightFakeQuant, ActFakeQuant, QATLayer, QATModel = _classes()
    name, x = _as_batches(calib, "QAT calibration data")
    x = x[:samples] if samples else x
    m = copy.deepcopy(model).float().eval()
    folded = fold_batchnorm(m)
    targets = {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Linear | nn.modules.conv._ConvNd)
               and not getattr(mod, "transposed", False)}
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no Conv or Linear layer: QAT quantizes those; nothing to train")
    groups = _calibrate_inputs(m, targets, x, method, aq, batch_size)
    for layers, (lo, hi) in groups:
        sc, zp = scale_zero_point(lo, hi, aq)
        act = ActFakeQuant(aq, float(sc), int(zp), learn_zero_point=bool(lo < 0))
        for n in layers:
            layer = targets[n]
            _set_module(m, n, QATLayer(layer, act, WeightFakeQuant(layer.weight, wq, weight_init)))
    spec = getattr(model, "zoo_spec", None)
    settings = {"weight_bits": int(weight_bits), "activation_bits": int(activation_bits), "weight_type": weight_type,
                "activation_type": aq.name, "reduce_range": rr and weight_bits == 8, "method": method,
                "input_name": name or (next(iter(spec.inputs)) if spec else "input"),
                "output_names": list(spec.outputs) if spec else None, "batchnorm_folded": folded}
    log.info("QAT: %d Conv/Linear layers, %d activation quantizers, %d BatchNorm folded; weights %s, activations %s",
             len(targets), len(groups), folded, wq, aq)
    return QATModel(m, settings)


def _calibrate_inputs(model, targets: dict, x: np.ndarray, method: str, aq: QType, batch_size: int):
    """Ranges of the inputs of ``targets`` over ``x``; layers reading the same tensor form one group (one
    quantizer), observed once per batch. Returns [(layer names, (lo, hi))]."""
    import torch

    group: dict[str, int] = {}  # layer -> index of the tensor it reads (found in the first batch)
    members: list[list[str]] = []
    observers: dict[int, object] = {}
    live: list[tuple] = []  # (tensor, group) read in this batch, held so that identity stays meaningful

    def hook(name):
        def pre(_mod, args):
            t = args[0]
            if name not in group:
                g = next((g for u, g in live if u is t), None)
                if g is None:
                    g = len(members)
                    members.append([])
                group[name] = g
                members[g].append(name)
            g = group[name]
            if all(u is not t for u, _ in live):
                observers.setdefault(g, make_observer(method)).update(t.detach().numpy())
                live.append((t, g))
        return pre

    handles = [mod.register_forward_pre_hook(hook(n)) for n, mod in targets.items()]
    try:
        with torch.no_grad():
            for xb in _batches(x, batch_size):
                _forward_tensor(model, xb)
                live.clear()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in targets if n not in group]
    if missing:
        raise ConfigError(f"layers {missing} did not run on the calibration data: QAT quantizes the layers the "
                          "model's forward uses")
    return [(names, tuple(float(v) for v in observers[g].range(aq, False))) for g, names in enumerate(members)]


def _forward_tensor(model, xb: np.ndarray):
    import torch

    return model(torch.from_numpy(np.ascontiguousarray(xb)))


# ------------------------------------------------------------------------------------ fine-tune
def finetune_qat(qm, data, *, epochs: float = 1, lr: float = 5e-4, batch_size: int = 64, seed: int = 0,
                 samples: int | None = None, progress: bool = True, threads: int | None = None) -> list[dict]:
    """Fine-tune QAT model ``qm`` on ``data`` (a tuili.zoo TrainData, or (x_train, y_train[, x_val, y_val])):
    AdamW, cosine learning rate from ``lr``, cross-entropy; ``samples`` caps the training samples per epoch
    (a random subset, fixed by ``seed``); ``epochs`` may be fractional (0.25: a quarter of an epoch's batches). Returns per epoch: loss, train_acc and val_acc where there is a
    validation split. BatchNorm statistics stay frozen."""
    import torch

    from tuili.zoo.training import fit, trainable

    if not hasattr(qm, "qat_layers"):
        raise ConfigError("finetune_qat takes the model prepare_qat returned; call prepare_qat(model, calib) first")
    if torch.is_inference_mode_enabled():
        raise ConfigError("QAT fine-tuning cannot run under torch.inference_mode(): leave inference mode to train")
    params = trainable(qm, "the QAT model")
    if not epochs > 0:
        raise ConfigError(f"epochs must be > 0 (fractions allowed), got {epochs}")
    xtr, ytr, xval, yval = _train_arrays(data)
    scales = [p for name, p in qm.named_parameters() if p.requires_grad and name.endswith(("scale", "zero_point"))]
    ids = {id(p) for p in scales}
    groups = [{"params": [p for p in params if id(p) not in ids], "weight_decay": 1e-4},
              {"params": scales, "weight_decay": 0.0}]  # learned quantization parameters are not decayed
    return fit(qm, xtr, ytr, epochs=epochs, lr=lr, schedule="cosine", batch_size=batch_size, seed=seed, params=groups,
               samples=samples, watch=("val_acc", xval, yval) if xval is not None else None, progress=progress,
               desc="QAT fine-tune", threads=threads or 1)


def _train_arrays(data):
    if hasattr(data, "x_train"):
        return data.x_train, data.y_train, data.x_val, data.y_val
    if isinstance(data, tuple | list) and len(data) in (2, 4):
        x, y, *val = data
        xv, yv = val if val else (None, None)
        return (np.asarray(x, np.float32), np.asarray(y, np.int64),
                None if xv is None else np.asarray(xv, np.float32), None if yv is None else np.asarray(yv, np.int64))
    raise ConfigError("training data: give a tuili.zoo TrainData or (x_train, y_train[, x_val, y_val]) arrays")


# --------------------------------------------------------------------------------------- export
def export_qat(qm, path, calib, *, method: str = DEFAULT_METHOD, batch_size: int = 16,
               samples: int | None = 512) -> Report:
    """Write QAT model ``qm`` as a QDQ ONNX model at ``path`` with its learned weight scales and activation
    (scale, zero point); ``calib`` (as for prepare_qat) calibrates the tensors QAT did not learn."""
    import torch

    from tuili.zoo.core import _quiet_exporter

    if not hasattr(qm, "qat_layers"):
        raise ConfigError("export_qat takes the model prepare_qat returned")
    t0 = time.perf_counter()
    s = qm.settings
    name, x = _as_batches(calib, "QAT export calibration data")
    name = name or s["input_name"]
    x = x[:samples] if samples else x
    float_model = qm.float_model()
    buf = io.BytesIO()
    outputs = s["output_names"]
    with _quiet_exporter(), torch.no_grad():
        probe = float_model(torch.from_numpy(x[:2]))
        if outputs is None:
            outputs = ["output"] if torch.is_tensor(probe) else [f"output_{i}" for i in range(len(probe))]
        torch.onnx.export(float_model, (torch.from_numpy(x[:2]),), buf, dynamo=False, opset_version=EXPORT_OPSET,
                          input_names=[name], output_names=outputs, do_constant_folding=True,
                          dynamic_axes={name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    four_bit = "4" in s["activation_type"] or s["weight_type"] == "int4"
    graph, _ = prepare(load(buf.getvalue()), min_opset=FOUR_BIT_OPSET if four_bit else MIN_OPSET)
    weight_scales, act_params = _learned_params(qm, graph)
    wq = qtype(s["weight_type"], symmetric=True, reduce_range=s["reduce_range"], bits=s["weight_bits"])
    cal = Calibrated(graph, {name: x}, method, True, activation_type=s["activation_type"], weight_type=s["weight_type"],
                     reduce_range=s["reduce_range"], weight_bits=s["weight_bits"] if not s["reduce_range"] else None,
                     batch_size=batch_size, bias_correction=False, act_params=act_params, weight_scales=weight_scales)
    assert cal.ws.qtype == wq, (cal.ws.qtype, wq)
    out, p = cal.build()
    out.producer_name = "tuili.compress.quant.qat"
    out.save(str(path))
    report = static_report(graph, path, p, cal, mode="qat")
    report.model_in = f"<QAT {type(qm.model).__name__}>"
    report.settings = {**cal.settings(), "weights": f"{wq.name} [{wq.qmin}, {wq.qmax}], learned per-channel scales",
                       "activations": f"{s['activation_type']}, {len(act_params)} learned "
                                      f"(scale, zero point), {len(p.observed) - len(act_params)} calibrated ({method})"}
    report.seconds = time.perf_counter() - t0
    return report


def _learned_params(qm, graph: Graph) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """(node name -> learned weight scales, observed tensor -> learned (scale, zero point)), each QAT layer
    matched to the Conv/MatMul/Gemm node(s) whose exported name carries its module path."""
    by_scope: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if node.op_type in ("Conv", "MatMul", "Gemm") and node.name.count("/") >= 2:
            by_scope.setdefault(node.name.split("/")[-2], []).append(node)
    p = qdq.plan(graph, op_types=("Conv", "MatMul", "Gemm"))
    planned = {id(n) for n in p.compute}
    weight_scales: dict[str, np.ndarray] = {}
    act_params: dict[str, tuple] = {}
    for path, layer in qm.qat_layers().items():
        nodes = [n for n in by_scope.get(path, []) if id(n) in planned]
        if not nodes:
            raise ConfigError(f"QAT layer {path!r} ({type(layer.layer).__name__}) has no quantizable Conv/MatMul/Gemm "
                              "node in the exported graph; its learned scales cannot be exported")
        w = layer.layer.weight.detach().numpy()
        for node in nodes:
            _check_weight(node, w, path)
            weight_scales[node.name] = layer.weight_quant.exported()
            src = p.tensors[node.inputs[0].name]
            params = layer.act.exported()
            if src in act_params and not _same(act_params[src], params):
                log.warning("tensor %r: two QAT quantizers reach it (through %s); the export uses the first",
                            src, node.name)
                continue
            act_params[src] = params
    return weight_scales, act_params


def _same(a, b) -> bool:
    return float(a[0]) == float(b[0]) and int(a[1]) == int(b[1])


def _check_weight(node: Node, w: np.ndarray, path: str) -> None:
    """The node's weight must be the layer's (as exported): a pass that rescaled it would void the learned scales."""
    from tuili.passes.base import const_of

    v = const_of(node.inputs[1])
    if v is not None and (node.op_type == "MatMul" or (node.op_type == "Gemm" and not node.attrs.get("transB", 0))):
        v = v.T
    if v is None or v.shape != w.shape or not np.allclose(v, w, rtol=1e-6, atol=1e-7):
        raise ConfigError(f"node {node.name!r} ({node.op_type}) does not carry the weight of QAT layer {path!r} as "
                          "trained; graph preparation changed it, so the learned scales do not apply")


__all__ = ["ACTIVATION_TYPES", "check_bits", "export_qat", "finetune_qat", "fold_batchnorm", "prepare_qat"]
