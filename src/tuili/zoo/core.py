"""create / example_inputs / export: the zoo's public verbs (torch is imported lazily)."""
from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tuili.errors import ConfigError, TuiliError
from tuili.zoo.registry import ModelSpec, check_resolution, check_seq_len, check_width, get_spec

log = logging.getLogger(__name__)


def _num_classes(spec: ModelSpec, num_classes: int | None) -> int | None:
    if num_classes is None:
        return spec.num_classes
    if spec.num_classes is None:
        raise ConfigError(f"{spec.name} is a {spec.task} model: it has no classifier, num_classes does not apply")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ConfigError(f"{spec.name}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def create(name: str, *, width: float | None = None, resolution: int | None = None, num_classes: int | None = None,
           seed: int = 0, calibrate: bool = True):
    """Build zoo model ``name`` with random weights (deterministic in ``seed``), in eval mode.

    CNNs get BatchNorm statistics from one train-mode pass over a random batch at ``resolution``
    (see :func:`tuili.zoo.layers.calibrate_batchnorm`), so activations are well-scaled.
    """
    import torch

    from tuili.zoo.layers import calibrate_batchnorm

    spec = get_spec(name)
    w = check_width(spec, width)
    r = check_resolution(spec, resolution)
    n = _num_classes(spec, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder(width=w, num_classes=n, resolution=r)
        if calibrate and not spec.is_text:
            x = torch.randn(2, spec.in_channels, r, r)
            if spec.name == "digits_cnn":
                x = (x * 4 + 8).clamp(0, 16)
            calibrate_batchnorm(model, x)
    model.eval()
    model.zoo_spec = spec  # type: ignore[attr-defined]
    return model


def example_inputs(name: str, batch: int = 1, *, resolution: int | None = None, seq_len: int | None = None,
                   past_len: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs keyed by the ONNX input names.

    Images: standard-normal float32 [batch, C, R, R] (digits: pixel values 0..16).
    Encoders: random token ids and an attention mask whose row i (i >= 1) pads its last positions.
    GPT: ``seq_len`` new token ids and ``past_len`` cached key/value positions per layer.
    """
    spec = get_spec(name)
    if int(batch) < 1:
        raise ConfigError(f"{name}: batch must be >= 1, got {batch}")
    rng = np.random.default_rng(seed)
    r = check_resolution(spec, resolution)
    s = check_seq_len(spec, seq_len)
    shapes = spec.input_shapes(batch=batch, resolution=r, seq_len=s)
    out: dict[str, np.ndarray] = {}
    if not spec.is_text:
        (iname, shape), = shapes.items()
        if spec.name == "digits_cnn":
            out[iname] = rng.integers(0, 17, size=shape).astype(np.float32)
        else:
            out[iname] = rng.standard_normal(shape, dtype=np.float32)
        return out
    from tuili.zoo.models.bert import CONFIGS as BERT
    from tuili.zoo.models.gpt import GPT_SMALL

    vocab = BERT[spec.name].vocab if spec.name in BERT else GPT_SMALL.vocab
    for iname, shape in shapes.items():
        if iname == "input_ids":
            out[iname] = rng.integers(0, vocab, size=shape, dtype=np.int64)
        elif iname == "attention_mask":
            mask = np.ones(shape, dtype=np.int64)
            for i in range(1, shape[0]):
                pad = min(shape[1] - 1, (i * shape[1]) // (2 * shape[0]))
                if pad:
                    mask[i, shape[1] - pad:] = 0
            out[iname] = mask
        else:  # past key/value
            shape = tuple(past_len if d == "past_sequence" else d for d in shape)
            out[iname] = rng.standard_normal(shape, dtype=np.float32)
    return out


# ---------------------------------------------------------------------------- export


def _dynamic_axes(spec: ModelSpec, batch) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    dyn_batch = batch == "dynamic"
    for iname, shape in spec.inputs.items():
        d = {i: str(v) for i, v in enumerate(shape) if (v == "batch" and dyn_batch) or v in ("sequence", "past_sequence")}
        if d:
            axes[iname] = d
    for oname in spec.outputs:
        d = {0: "batch"} if dyn_batch else {}
        if spec.is_text:
            if oname.startswith("present."):
                d[2] = "total_sequence"
            elif oname != "pooler_output":
                d[1] = "sequence"
        if d:
            axes[oname] = d
    return axes


def _check_opset(opset) -> int:
    from torch.onnx import _constants

    lo, hi = _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    try:
        o = int(opset)
    except (TypeError, ValueError):
        raise ConfigError(f"opset must be an integer, got {opset!r}") from None
    if not lo <= o <= hi:
        raise ConfigError(f"opset {o} is outside the range the exporter supports ({lo}..{hi}); pick an opset in that range")
    return o


_OP_RES = (re.compile(r"operator '([^']+)'"), re.compile(r"export failed on (\S+?),? which is not implemented"))
_ADDED_RE = re.compile(r"added in version (\d+)")


def export(name: str, path, *, opset: int = 17, batch: Any = "dynamic", resolution: int | None = None,
           width: float | None = None, seq_len: int | None = None, num_classes: int | None = None, seed: int = 0,
           model=None, check: bool = True, keep_batchnorm: bool = False) -> Path:
    """Export zoo model ``name`` to ONNX at ``path`` and return the path.

    Inputs/outputs carry the names of :class:`ModelSpec` (``input`` -> ``logits`` for CNNs); the
    batch axis is symbolic (``batch="dynamic"``) or fixed (an int); text models also keep the
    sequence axes symbolic. ``model`` exports given weights (e.g. a trained model) instead of a
    fresh random model. The file is validated with ``onnx.checker`` (full check) unless ``check=False``.
    By default torch folds each BatchNorm into the preceding Conv, as deployed files usually are;
    ``keep_batchnorm=True`` keeps BatchNormalization nodes (work for a graph optimizer's folding pass).
    """
    import onnx
    import torch

    spec = get_spec(name)
    o = _check_opset(opset)
    if batch != "dynamic":
        try:
            batch = int(batch)
        except (TypeError, ValueError):
            raise ConfigError(f"batch must be 'dynamic' or a positive integer, got {batch!r}") from None
        if batch < 1:
            raise ConfigError(f"batch must be 'dynamic' or a positive integer, got {batch}")
    if model is None:
        model = create(name, width=width, resolution=resolution, num_classes=num_classes, seed=seed)
    else:
        check_width(spec, width)
        model.eval()
    r = check_resolution(spec, resolution)
    trace_batch = 2 if batch == "dynamic" else batch
    if spec.task == "text-generation":
        feeds = example_inputs(name, trace_batch, seq_len=seq_len or 3, past_len=2, seed=seed)
    else:
        feeds = example_inputs(name, trace_batch, resolution=r, seq_len=seq_len, seed=seed)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.debug("exporting %s (opset %d, batch %s) to %s", name, o, batch, path)
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                model, args, str(path), dynamo=False, opset_version=o,
                input_names=list(spec.inputs), output_names=list(spec.outputs),
                dynamic_axes=_dynamic_axes(spec, batch), do_constant_folding=True,
                training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL,
            )
    except TuiliError:
        raise
    except Exception as e:  # torch.onnx.errors.* and the symbolic registry's errors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        op = next((hit for hit in (rx.search(str(e)) for rx in _OP_RES) if hit), None)
        added = _ADDED_RE.search(str(e))
        if op:
            need = int(added.group(1)) if added else _probe_min_opset(model, args, spec, batch, o)
            where = f"it needs opset {need} or newer (use --opset {need})" if need else "no opset up to the exporter's maximum can express it"
            raise ConfigError(f"{name}: cannot export to opset {o}: operator {op.group(1)} has no ONNX form at this opset; {where}") from e
        raise ConfigError(f"{name}: ONNX export at opset {o} failed: {msg}") from e
    m = onnx.load(str(path))
    m.producer_name = "tuili.zoo"
    m.doc_string = f"{spec.name}: {spec.paper}"
    meta = {"zoo.name": spec.name, "zoo.paper": spec.paper, "zoo.task": spec.task}
    if width is not None:
        meta["zoo.width"] = str(width)
    if r is not None:
        meta["zoo.resolution"] = str(r)
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    return path


_EXPORT_LOCK = threading.RLock()


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the TorchScript exporter: its deprecation warnings, and the IR dump it prints to
    stdout when a symbolic fails (torch 2.13's setup_onnx_logging turns its log on by mistake)."""
    import torch

    try:
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils
    except ImportError:  # pragma: no cover - other torch layouts
        ts_utils = None
    with _EXPORT_LOCK:  # the patch below is process-wide; exports also share torch's tracer state
        saved = getattr(ts_utils, "setup_onnx_logging", None)
        if saved is not None:
            ts_utils.setup_onnx_logging = lambda verbose: contextlib.nullcontext()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            if saved is not None:
                ts_utils.setup_onnx_logging = saved
            torch._C._jit_set_onnx_log_enabled(False)


def _probe_min_opset(model, args, spec, batch, failed: int) -> int | None:
    """Find the first opset that exports (only on the error path)."""
    import io

    import torch
    from torch.onnx import _constants

    for o in range(failed + 1, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1):
        try:
            with _quiet_exporter(), torch.no_grad():
                torch.onnx.export(model, args, io.BytesIO(), dynamo=False, opset_version=o,
                                  input_names=list(spec.inputs), output_names=list(spec.outputs),
                                  dynamic_axes=_dynamic_axes(spec, batch))
            return o
        except Exception:
            continue
    return None
