"""Check a parsed model configuration the way Triton does; every problem is a
:class:`ModelConfigError` naming the field and, when the source text is known, its line and column."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from tuili.model_config.locate import Locator, ModelConfigError
from tuili.model_config.paths import resolve_inside
from tuili.model_config.protos import ModelConfig
from tuili.model_config.protos import model_config_pb2 as mc

ENSEMBLE_PLATFORM = "ensemble"


class _Checker:
    def __init__(self, source: str | None, text: str | None):
        self.source = source
        self.loc = Locator(text, ModelConfig.DESCRIPTOR) if text else None

    def fail(self, field: str, message: str) -> NoReturn:
        line = col = None
        if self.loc is not None:
            line, col = self.loc.where(field)
        raise ModelConfigError(message, file=self.source, line=line, column=col, field=field)


def validate_model_config(config: ModelConfig, *, model_dir: str | Path | None = None,
                          source: str | None = None, text: str | None = None,
                          require_io: bool = False, allow_paths_outside: bool = False) -> None:
    """Check a parsed config; raise ModelConfigError naming the field.

    ``text`` (the config.pbtxt source) lets errors carry line numbers.
    ``require_io`` demands at least one input and one output (use after
    auto-complete, when the config should be complete). With ``model_dir`` the files the config
    names (label files) must exist inside it, unless ``allow_paths_outside``
    (:mod:`tuili.model_config.paths`)."""
    ck = _Checker(source, text)
    if model_dir is not None and config.name and config.name != Path(model_dir).name:
        ck.fail("name", f"model name {config.name!r} does not match its directory "
                        f"{Path(model_dir).name!r}; rename one so they agree")
    if config.max_batch_size < 0:
        ck.fail("max_batch_size", f"max_batch_size must be >= 0 (0 disables batching), got {config.max_batch_size}")
    batching = config.max_batch_size > 0
    is_ensemble = config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling")
    if config.HasField("ensemble_scheduling") and config.platform not in ("", ENSEMBLE_PLATFORM):
        ck.fail("platform", f"a model with ensemble_scheduling must have platform \"ensemble\", got {config.platform!r}")
    if config.platform == ENSEMBLE_PLATFORM and not config.HasField("ensemble_scheduling"):
        ck.fail("ensemble_scheduling", "platform \"ensemble\" needs an ensemble_scheduling block with its steps")

    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for i, t in enumerate(tensors):
            path = f"{kind}[{i}]"
            if not t.name:
                ck.fail(f"{path}.name", f"{kind} #{i} has no name")
            if t.name in seen:
                ck.fail(f"{path}.name", f"{kind} name {t.name!r} is declared twice")
            seen.add(t.name)
            if t.data_type == mc.TYPE_INVALID:
                ck.fail(f"{path}.data_type", f"{kind} {t.name!r} needs a data_type (e.g. TYPE_FP32)")
            if len(t.dims) == 0 and not (t.HasField("reshape")):
                ck.fail(f"{path}.dims", f"{kind} {t.name!r} needs dims (the shape without the batch "
                                        f"dimension; -1 for a variable size)")
            for d in t.dims:
                if d == 0 or d < -1:
                    ck.fail(f"{path}.dims", f"{kind} {t.name!r} has dims {list(t.dims)}: each dimension "
                                            f"must be >= 1, or -1 for a variable size")
            if t.HasField("reshape"):
                rs = list(t.reshape.shape)
                if any(d == 0 or d < -1 for d in rs):
                    ck.fail(f"{path}.reshape", f"{kind} {t.name!r} has reshape {rs}: dimensions must be >= 1 or -1")
                if -1 not in rs and -1 not in t.dims and _prod(rs) != _prod(t.dims):
                    ck.fail(f"{path}.reshape", f"{kind} {t.name!r}: reshape {rs} has {_prod(rs)} elements but "
                                               f"dims {list(t.dims)} has {_prod(t.dims)}")
            if kind == "output" and t.label_filename and model_dir is not None:
                _check_label_file(ck, f"{path}.label_filename", t.name, t.label_filename, model_dir,
                                  allow_paths_outside)
    if require_io:
        if len(config.input) == 0:
            ck.fail("input", "the config declares no input and none could be auto-completed")
        if len(config.output) == 0:
            ck.fail("output", "the config declares no output and none could be auto-completed")

    for i, g in enumerate(config.instance_group):
        if g.count < 0:
            ck.fail(f"instance_group[{i}].count", f"instance count must be >= 1, got {g.count}")

    if config.HasField("version_policy"):
        vp = config.version_policy
        which = vp.WhichOneof("policy_choice")
        if which == "latest" and vp.latest.num_versions < 1:
            ck.fail("version_policy.latest.num_versions", "latest { num_versions } must be >= 1")
        if which == "specific":
            if len(vp.specific.versions) == 0:
                ck.fail("version_policy.specific.versions", "specific { versions } lists no version")
            if any(v < 0 for v in vp.specific.versions):
                ck.fail("version_policy.specific.versions", f"versions must be >= 0, got {list(vp.specific.versions)}")

    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        for s in db.preferred_batch_size:
            if s < 1:
                ck.fail("dynamic_batching.preferred_batch_size", f"preferred batch size {s} must be >= 1")
            if batching and s > config.max_batch_size:
                ck.fail("dynamic_batching.preferred_batch_size",
                        f"preferred batch size {s} exceeds max_batch_size {config.max_batch_size}; "
                        f"lower it or raise max_batch_size")
        if not batching and len(db.preferred_batch_size):
            ck.fail("dynamic_batching.preferred_batch_size",
                    "preferred batch sizes need max_batch_size > 0 (the model does not batch)")
        if db.priority_levels == 0:
            if db.default_priority_level != 0:
                ck.fail("dynamic_batching.default_priority_level",
                        "default_priority_level is set but priority_levels is 0")
            if len(db.priority_queue_policy):
                ck.fail("dynamic_batching.priority_queue_policy",
                        "priority_queue_policy is set but priority_levels is 0")
        else:
            if not 1 <= db.default_priority_level <= db.priority_levels:
                ck.fail("dynamic_batching.default_priority_level",
                        f"default_priority_level must be in 1..{db.priority_levels} (priority_levels), "
                        f"got {db.default_priority_level}")
            for level in db.priority_queue_policy:
                if not 1 <= level <= db.priority_levels:
                    ck.fail("dynamic_batching.priority_queue_policy",
                            f"priority level {level} is outside 1..{db.priority_levels} (priority_levels)")

    if is_ensemble and config.HasField("ensemble_scheduling"):
        _validate_ensemble(config, ck)


def _check_label_file(ck: _Checker, field: str, output: str, filename: str, model_dir: str | Path,
                      allow_outside: bool) -> None:
    try:
        path = resolve_inside(model_dir, filename, field=field, allow_outside=allow_outside)
    except ModelConfigError as e:
        ck.fail(field, f"label file of output {output!r}: {e.reason}")
    if not Path(path).is_file():
        ck.fail(field, f"label file {filename!r} of output {output!r} is not in {model_dir}")


def _prod(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _validate_ensemble(config: ModelConfig, ck: _Checker) -> None:
    steps = config.ensemble_scheduling.step
    if len(steps) == 0:
        ck.fail("ensemble_scheduling.step", "an ensemble needs at least one step")
    inputs = {t.name for t in config.input}
    outputs = {t.name for t in config.output}
    produced: dict[str, int] = {}
    for i, st in enumerate(steps):
        path = f"ensemble_scheduling.step[{i}]"
        if not st.model_name:
            ck.fail(f"{path}.model_name", f"ensemble step {i} names no model")
        if st.model_name == config.name:
            ck.fail(f"{path}.model_name", f"ensemble step {i} calls the ensemble {config.name!r} itself")
        if len(st.input_map) == 0:
            ck.fail(f"{path}.input_map", f"ensemble step {i} ({st.model_name}) maps no input")
        for tensor in st.output_map.values():
            if tensor in inputs:
                ck.fail(f"{path}.output_map", f"step {i} ({st.model_name}) writes ensemble tensor {tensor!r}, "
                                              f"which is an ensemble input")
            if tensor in produced:
                ck.fail(f"{path}.output_map", f"ensemble tensor {tensor!r} is produced by step {produced[tensor]} "
                                              f"and step {i}; each tensor needs exactly one producer")
            produced[tensor] = i
    for i, st in enumerate(steps):
        for model_in, tensor in st.input_map.items():
            if tensor not in inputs and tensor not in produced:
                ck.fail(f"ensemble_scheduling.step[{i}].input_map",
                        f"step {i} ({st.model_name}) input {model_in!r} reads ensemble tensor {tensor!r}, "
                        f"which is neither an ensemble input ({sorted(inputs)}) nor any step's output")
    for name in outputs:
        if name not in produced:
            ck.fail("output", f"ensemble output {name!r} is not produced by any step's output_map")
    # The steps must form a DAG: repeatedly run every step whose inputs are available.
    available = set(inputs)
    pending = list(range(len(steps)))
    while pending:
        ready = [i for i in pending if all(t in available for t in steps[i].input_map.values())]
        if not ready:
            names = ", ".join(f"{i} ({steps[i].model_name})" for i in pending)
            ck.fail(f"ensemble_scheduling.step[{pending[0]}].input_map",
                    f"ensemble steps {names} wait on each other (a cycle)")
        for i in ready:
            available.update(steps[i].output_map.values())
            pending.remove(i)
