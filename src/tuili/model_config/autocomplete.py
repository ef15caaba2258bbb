"""Complete a missing or partial model configuration from what the backend reports about the model,
like Triton's auto-complete."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tuili.model_config.locate import ModelConfigError
from tuili.model_config.parse import CONFIG_FILENAME
from tuili.model_config.protos import ModelConfig
from tuili.model_config.protos import model_config_pb2 as mc
from tuili.model_config.spec import TensorSpec
from tuili.model_config.validate import validate_model_config

log = logging.getLogger(__name__)

#: Triton's default when auto-complete enables batching for a model that can batch.
DEFAULT_MAX_BATCH_SIZE = 4


def _config_dim(d: int) -> int:
    """A model dimension as config dims write it: -1 for a dynamic (or empty) size."""
    return d if d > 0 else -1


def _dtype_name(value: int) -> str:
    return mc.DataType.Name(value) if value in mc.DataType.values() else str(value)


def autocomplete(config: ModelConfig, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec],
                 supports_batching: bool = True, *,
                 default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 model_dir: str | Path | None = None, source: str | None = None,
                 allow_paths_outside: bool = False) -> ModelConfig:
    """Return a copy of ``config`` completed from the backend's tensor metadata.

    Like Triton's auto-complete: missing inputs/outputs are added with their
    data_type and dims; listed ones get a missing data_type/dims filled (and a
    mismatch with the model is an error naming the field). If max_batch_size is
    unset (0) and the model can batch (``supports_batching`` and every tensor's
    first dimension is dynamic), max_batch_size becomes ``default_max_batch_size``
    and dynamic batching is enabled unless another scheduler is set. dims never
    include the batch dimension when max_batch_size > 0. A missing instance
    group becomes one CPU instance. The result is validated with
    ``require_io=True`` (and ``allow_paths_outside``, see :mod:`tuili.model_config.paths`)."""
    cfg = ModelConfig()
    cfg.CopyFrom(config)
    ins, outs = list(inputs), list(outputs)
    specs = ins + outs
    src = source or (str(Path(model_dir) / CONFIG_FILENAME) if model_dir else None)

    def fail(field: str, msg: str):
        raise ModelConfigError(msg, file=src, field=field)

    first_dynamic = bool(specs) and all(len(s.shape) >= 1 and _config_dim(s.shape[0]) == -1 for s in specs)
    if cfg.max_batch_size == 0 and supports_batching and first_dynamic and default_max_batch_size > 0 \
            and not _declares_unbatched_dims(cfg, ins, outs):
        cfg.max_batch_size = default_max_batch_size
        if cfg.WhichOneof("scheduling_choice") is None:
            cfg.dynamic_batching.SetInParent()
        log.info("auto-complete: model %r can batch; max_batch_size=%d", cfg.name, cfg.max_batch_size)
    strip = cfg.max_batch_size > 0

    for kind, specs_k, declared in (("input", ins, cfg.input), ("output", outs, cfg.output)):
        by_name = {s.name: s for s in specs_k}
        if specs_k:
            for i, t in enumerate(declared):
                if t.name not in by_name:
                    fail(f"{kind}[{i}].name", f"{kind} {t.name!r} is not a {kind} of the model, whose "
                                              f"{kind}s are {sorted(by_name)}")
        have = {t.name for t in declared}
        for spec in specs_k:
            if spec.name not in have:
                t = declared.add()
                t.name = spec.name
        for i, t in enumerate(declared):
            s = by_name.get(t.name)
            if s is None:
                continue
            dt = s.dtype.config_value
            if t.data_type == mc.TYPE_INVALID:
                t.data_type = dt
            elif t.data_type != dt:
                fail(f"{kind}[{i}].data_type", f"{kind} {t.name!r} is declared {_dtype_name(t.data_type)} "
                                               f"but the model has {_dtype_name(dt)}")
            shape = [_config_dim(d) for d in s.shape]
            if strip:
                if not shape:
                    fail("max_batch_size", f"max_batch_size is {cfg.max_batch_size} but {kind} {t.name!r} "
                                           f"is a scalar in the model (no batch dimension); set max_batch_size: 0")
                shape = shape[1:]
            if len(t.dims) == 0 and not t.HasField("reshape"):
                if not shape:  # scalar per batch item: Triton writes dims [1] with reshape []
                    t.dims.append(1)
                    t.reshape.SetInParent()
                else:
                    t.dims.extend(shape)
    if not cfg.instance_group:
        g = cfg.instance_group.add()
        g.count = 1
        g.kind = mc.ModelInstanceGroup.KIND_CPU
    else:
        for g in cfg.instance_group:
            if g.count == 0:
                g.count = 1
    validate_model_config(cfg, model_dir=model_dir, source=src, require_io=True,
                          allow_paths_outside=allow_paths_outside)
    return cfg


def _declares_unbatched_dims(cfg: ModelConfig, ins: list[TensorSpec], outs: list[TensorSpec]) -> bool:
    """True if the config already writes dims equal to the model's full shape
    (the author meant max_batch_size 0)."""
    by_name = {s.name: s for s in ins + outs}
    for t in list(cfg.input) + list(cfg.output):
        s = by_name.get(t.name)
        if s is not None and len(t.dims) and len(t.dims) == len(s.shape):
            return True
    return False
