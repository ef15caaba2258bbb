"""Model configuration: read, check, complete and render Triton-style configs.

A model directory of the repository holds ``config.pbtxt``, protobuf text format
of the ``ModelConfig`` message (src/tuili/serve/protos/model_config.proto, the
same schema as Triton's, so existing files parse). This module

* parses it (:func:`load_model_config`, :func:`parse_model_config`,
  :func:`parse_model_config_json`), turning every syntax, unknown-field or
  semantic problem into a :class:`ModelConfigError` (a ``ConfigError``) that
  names the file, the line and column, and the field path (``input[1].dims``);
* completes a missing or partial config from what the backend reports about the
  model (:func:`autocomplete`, like Triton's auto-complete);
* renders it as Triton's JSON form (:func:`config_to_json`), which is what
  ``GET /v2/models/{model}/config`` returns.

Datatype helpers (TYPE_FP32 <-> "FP32" <-> numpy) live in tuili.serve.types and
are re-exported here.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tuili.errors import ConfigError
from tuili.serve.protos import model_config_pb2 as mc
from tuili.serve.types import (  # noqa: F401  (re-exported datatype helpers)
    CONFIG_TO_V2,
    V2_TO_CONFIG,
    config_to_numpy,
    config_to_v2,
    numpy_to_config,
    numpy_to_v2,
    v2_to_config,
    v2_to_numpy,
)

log = logging.getLogger(__name__)

ModelConfig = mc.ModelConfig
DataType = mc.DataType

CONFIG_FILENAME = "config.pbtxt"
#: Triton's default when auto-complete enables batching for a model that can batch.
DEFAULT_MAX_BATCH_SIZE = 4
ENSEMBLE_PLATFORM = "ensemble"

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "load_model_config",
    "parse_model_config",
    "parse_model_config_json",
    "validate_model_config",
    "autocomplete",
    "config_to_json",
    "config_to_pbtxt",
    "TensorSpec",
    "config_to_v2",
    "v2_to_config",
    "config_to_numpy",
    "numpy_to_config",
]


class ModelConfigError(ConfigError):
    """A model configuration problem, located: ``file``, ``line``, ``column`` (1-based,
    None when unknown) and ``field`` (a path such as ``input[1].dims``)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None, field: str | None = None):
        self.file, self.line, self.column, self.field = file, line, column, field
        where = file or "<model config>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        fld = f" field '{field}':" if field else ""
        self.reason = message
        super().__init__(f"{where}:{fld} {message}")


# --------------------------------------------------------------------------- field locator
_TOKEN_RE = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}\[\]:,;<>])|(?P<word>[^\s{}\[\]:,;<>"'#]+)"""
)


@dataclass(frozen=True)
class _Tok:
    text: str
    kind: str
    line: int
    col: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    line, line_start = 1, 0
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            toks.append(_Tok(m.group(), kind, line, m.start() - line_start + 1))
        nl = m.group().count("\n")
        if nl:
            line += nl
            line_start = m.start() + m.group().rindex("\n") + 1
    return toks


class _Locator:
    """Maps field paths (``input[1].dims``) to the line/column where they are written.

    A light structural scan of the text-format source, guided by the message
    descriptors so repeated fields get indices. It tolerates malformed input
    (it is also used to name the field of a syntax error)."""

    def __init__(self, text: str, root: Descriptor):
        self.first: dict[str, tuple[int, int]] = {}
        self.ordered: list[tuple[int, int, str]] = []
        toks = _tokenize(text)
        # frame: (path prefix, descriptor or None, occurrence counts)
        stack: list[tuple[str, Descriptor | None, dict[str, int]]] = [("", root, {})]
        # list context: (path of the repeated message field, descriptor, frame depth)
        lists: list[tuple[str, Descriptor | None, int, list[int]]] = []
        i, n = 0, len(toks)
        while i < n:
            t = toks[i]
            nxt = toks[i + 1].text if i + 1 < n else ""
            prefix, desc, counts = stack[-1]
            if t.kind == "word" and nxt in (":", "{", "<", "["):
                fd = desc.fields_by_name.get(t.text) if desc is not None else None
                idx = counts.get(t.text, 0)
                counts[t.text] = idx + 1
                base = f"{prefix}{t.text}"
                repeated = fd is not None and fd.is_repeated and fd.message_type is not None
                path = f"{base}[{idx}]" if repeated else base
                self.first.setdefault(path, (t.line, t.col))
                self.first.setdefault(base, (t.line, t.col))
                self.ordered.append((t.line, t.col, path))
                sub = fd.message_type if fd is not None and fd.message_type is not None else None
                j = i + 1
                if toks[j].text == ":":
                    j += 1
                opener = toks[j].text if j < n else ""
                if opener in ("{", "<"):
                    stack.append((path + ".", sub, {}))
                    i = j + 1
                    continue
                if opener == "[" and sub is not None:
                    # list of messages: field: [ {..}, {..} ]
                    start = counts[t.text] - 1
                    counts[t.text] = start  # the elements below are counted one by one
                    lists.append((base, sub, len(stack), [start]))
                    i = j + 1
                    continue
                i = j
                continue
            if t.text in ("{", "<") and lists and lists[-1][2] == len(stack):
                base, sub, _, nxt_idx = lists[-1]
                idx = nxt_idx[0]
                nxt_idx[0] += 1
                counts[base.rsplit(".", 1)[-1]] = nxt_idx[0]
                path = f"{base}[{idx}]"
                self.first.setdefault(path, (t.line, t.col))
                self.ordered.append((t.line, t.col, path))
                stack.append((path + ".", sub, {}))
            elif t.text == "]" and lists and lists[-1][2] == len(stack):
                lists.pop()
            elif t.text in ("}", ">") and len(stack) > 1:
                stack.pop()
                while lists and lists[-1][2] > len(stack):
                    lists.pop()
            i += 1

    def where(self, path: str) -> tuple[int | None, int | None]:
        """Line/column of ``path`` or of its nearest written ancestor."""
        p = path
        while p:
            if p in self.first:
                return self.first[p]
            cut = max(p.rfind("."), p.rfind("["))
            if cut <= 0:
                break
            p = p[:cut]
        return None, None

    def field_at(self, line: int, col: int) -> str | None:
        """The last field written at or before (line, col)."""
        best = None
        for ln, c, path in self.ordered:
            if (ln, c) <= (line, col):
                best = path
            else:
                break
        return best


# --------------------------------------------------------------------------- parsing
def _clean_protobuf_message(msg: str) -> str:
    msg = re.sub(r"^\d+:\d+ : ", "", msg)
    msg = msg.replace("tuili.inference.", "")
    return msg


def _hint(reason: str) -> str:
    """What to do about a protobuf text-format error."""
    m = re.search(r'Enum type "([\w.]+)" has no value named', reason)
    if m:
        enum = _find_enum(m.group(1))
        if enum is not None:
            return "valid values: " + ", ".join(v.name for v in enum.values)
    if "has no field named" in reason:
        return ("check the spelling; the fields are those of Triton's model configuration "
                "(tuili/serve/protos/model_config.proto)")
    if "oneof" in reason:
        return "keep only one of these alternatives"
    if "multiple" in reason:
        return "write the field once, or use [ ... ] for a repeated field"
    return "fix the protobuf text-format syntax at this position"


def _find_enum(name: str):
    """Enum descriptor of model_config.proto by its name relative to the package."""
    try:
        return mc.DESCRIPTOR.pool.FindEnumTypeByName(f"{mc.DESCRIPTOR.package}.{name}")
    except KeyError:
        return None


def parse_model_config(text: str, source: str = "<config.pbtxt>", *, validate: bool = True,
                       model_dir: str | Path | None = None) -> ModelConfig:
    """Parse config.pbtxt text; errors are ModelConfigError naming ``source``,
    line, column and field. ``validate`` runs :func:`validate_model_config`."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        field = None
        if line is not None:
            loc = _Locator(text, ModelConfig.DESCRIPTOR)
            field = loc.field_at(line, col or 1)
        reason = _clean_protobuf_message(str(exc))
        raise ModelConfigError(f"{reason} ({_hint(reason)})", file=source, line=line, column=col,
                               field=field) from None
    if validate:
        validate_model_config(config, model_dir=model_dir, source=source, text=text)
    return config


def parse_model_config_json(text: str | Mapping, source: str = "<config JSON>", *,
                            validate: bool = True, model_dir: str | Path | None = None) -> ModelConfig:
    """Parse a config given as JSON (Triton's form, e.g. the ``config`` parameter of a
    repository load request)."""
    config = ModelConfig()
    try:
        if isinstance(text, Mapping):
            json_format.ParseDict(dict(text), config)
        else:
            json_format.Parse(text, config)
    except (json_format.ParseError, json.JSONDecodeError, TypeError, ValueError) as exc:
        msg = _clean_protobuf_message(str(exc))
        m = re.search(r'field named "([^"]+)"|Failed to parse (\w+) field', msg)
        field = (m.group(1) or m.group(2)) if m else None
        raise ModelConfigError(f"invalid JSON model config: {msg}", file=source, field=field) from None
    if validate:
        validate_model_config(config, model_dir=model_dir, source=source)
    return config


def load_model_config(model_dir: str | Path, *, validate: bool = True) -> ModelConfig:
    """Read ``<model_dir>/config.pbtxt``.

    A missing file gives a minimal config (just ``name``) for :func:`autocomplete`
    to fill from the model. A missing ``name`` is set to the directory name; a
    name that differs from the directory is an error (as in Triton). Inputs and
    outputs may be left out here (auto-complete fills them); whatever is written
    is validated."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelConfigError(f"model directory {model_dir} does not exist or is not a directory",
                               file=str(model_dir))
    path = model_dir / CONFIG_FILENAME
    if not path.exists():
        log.debug("%s has no %s; the config will be auto-completed", model_dir, CONFIG_FILENAME)
        return ModelConfig(name=model_dir.name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"cannot read the file: {exc}", file=str(path)) from None
    config = parse_model_config(text, str(path), validate=False)
    if not config.name:
        config.name = model_dir.name
    if validate:
        validate_model_config(config, model_dir=model_dir, source=str(path), text=text)
    return config


# --------------------------------------------------------------------------- validation
class _Checker:
    def __init__(self, source: str | None, text: str | None):
        self.source = source
        self.loc = _Locator(text, ModelConfig.DESCRIPTOR) if text else None

    def fail(self, field: str, message: str):
        line = col = None
        if self.loc is not None:
            line, col = self.loc.where(field)
        raise ModelConfigError(message, file=self.source, line=line, column=col, field=field)


def _dtype_name(value: int) -> str:
    return mc.DataType.Name(value) if value in mc.DataType.values() else str(value)


def validate_model_config(config: ModelConfig, *, model_dir: str | Path | None = None,
                          source: str | None = None, text: str | None = None,
                          require_io: bool = False) -> None:
    """Check a parsed config; raise ModelConfigError naming the field.

    ``text`` (the config.pbtxt source) lets errors carry line numbers.
    ``require_io`` demands at least one input and one output (use after
    auto-complete, when the config should be complete)."""
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
                if not (Path(model_dir) / t.label_filename).is_file():
                    ck.fail(f"{path}.label_filename", f"label file {t.label_filename!r} of output {t.name!r} "
                                                      f"is not in {model_dir}")
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
        for model_out, tensor in st.output_map.items():
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


# --------------------------------------------------------------------------- auto-complete
@dataclass
class TensorSpec:
    """What a backend reports about one model input/output. ``shape`` is the
    model's full shape including any batch dimension; -1 (or None / a string)
    marks a dynamic dimension. ``datatype`` is a V2 name, a TYPE_* name or a
    numpy dtype."""

    name: str
    datatype: Any
    shape: list


def _as_spec(obj: Any) -> TensorSpec:
    if isinstance(obj, TensorSpec):
        return obj
    if isinstance(obj, Mapping):
        dt = obj.get("datatype", obj.get("data_type", obj.get("dtype")))
        return TensorSpec(obj["name"], dt, list(obj.get("shape", obj.get("dims", []))))
    if isinstance(obj, (tuple, list)) and len(obj) == 3:
        return TensorSpec(obj[0], obj[1], list(obj[2]))
    if hasattr(obj, "name") and hasattr(obj, "shape"):
        dt = getattr(obj, "datatype", None) or getattr(obj, "dtype", None) or getattr(obj, "type", None)
        return TensorSpec(obj.name, dt, list(obj.shape))
    raise ConfigError(f"auto-complete got tensor metadata it cannot read: {obj!r}; "
                      f"pass dicts with name, datatype and shape")


def _config_dtype(datatype: Any, where: str) -> int:
    """Model-config DataType enum value for a V2 / TYPE_* / numpy / ONNX-ish datatype."""
    if isinstance(datatype, int) and not isinstance(datatype, bool):
        return datatype
    if isinstance(datatype, str):
        s = datatype
        if s.startswith("TYPE_") and s in mc.DataType.keys():
            return mc.DataType.Value(s)
        if s.startswith("tensor(") and s.endswith(")"):  # onnxruntime style "tensor(float)"
            s = s[len("tensor("):-1]
            s = {"float": "float32", "double": "float64", "string": "BYTES", "float16": "float16",
                 "bool": "bool"}.get(s, s)
        if s.upper() in V2_TO_CONFIG:
            return mc.DataType.Value(V2_TO_CONFIG[s.upper()])
        datatype = s
    try:
        return mc.DataType.Value(numpy_to_config(datatype))
    except Exception:
        raise ConfigError(f"auto-complete: {where} has datatype {datatype!r} with no model-config "
                          f"equivalent; declare it in config.pbtxt") from None


def _dim(d: Any) -> int:
    if d is None or isinstance(d, str):
        return -1
    d = int(d)
    return d if d > 0 else -1


def autocomplete(config: ModelConfig, inputs: Iterable[Any], outputs: Iterable[Any],
                 supports_batching: bool = True, *,
                 default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 model_dir: str | Path | None = None, source: str | None = None) -> ModelConfig:
    """Return a copy of ``config`` completed from the backend's tensor metadata.

    Like Triton's auto-complete: missing inputs/outputs are added with their
    data_type and dims; listed ones get a missing data_type/dims filled (and a
    mismatch with the model is an error naming the field). If max_batch_size is
    unset (0) and the model can batch (``supports_batching`` and every tensor's
    first dimension is dynamic), max_batch_size becomes ``default_max_batch_size``
    and dynamic batching is enabled unless another scheduler is set. dims never
    include the batch dimension when max_batch_size > 0. A missing instance
    group becomes one CPU instance. The result is validated with
    ``require_io=True``."""
    cfg = ModelConfig()
    cfg.CopyFrom(config)
    ins = [_as_spec(t) for t in inputs]
    outs = [_as_spec(t) for t in outputs]
    specs = ins + outs
    src = source or (str(Path(model_dir) / CONFIG_FILENAME) if model_dir else None)

    def fail(field: str, msg: str):
        raise ModelConfigError(msg, file=src, field=field)

    first_dynamic = bool(specs) and all(len(s.shape) >= 1 and _dim(s.shape[0]) == -1 for s in specs)
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
        for s in specs_k:
            if s.name not in have:
                t = declared.add()
                t.name = s.name
        for i, t in enumerate(declared):
            s = by_name.get(t.name)
            if s is None:
                continue
            dt = _config_dtype(s.datatype, f"{kind} {s.name!r}")
            if t.data_type == mc.TYPE_INVALID:
                t.data_type = dt
            elif t.data_type != dt:
                fail(f"{kind}[{i}].data_type", f"{kind} {t.name!r} is declared {_dtype_name(t.data_type)} "
                                               f"but the model has {_dtype_name(dt)}")
            shape = [_dim(d) for d in s.shape]
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
    validate_model_config(cfg, model_dir=model_dir, source=src, require_io=True)
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


# --------------------------------------------------------------------------- rendering
_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _fix_int64(value: Any, desc: Descriptor) -> Any:
    """protobuf's JSON writes 64-bit integers as strings; Triton's JSON has numbers."""
    if not isinstance(value, dict):
        return value
    for key, v in value.items():
        fd = desc.fields_by_name.get(key)
        if fd is None:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            for mk, mv in v.items():
                if vfd.message_type is not None:
                    _fix_int64(mv, vfd.message_type)
                elif vfd.type in _INT64_TYPES:
                    v[mk] = int(mv)
        elif fd.message_type is not None:
            for item in (v if fd.is_repeated else [v]):
                _fix_int64(item, fd.message_type)
        elif fd.type in _INT64_TYPES:
            value[key] = [int(x) for x in v] if fd.is_repeated else int(v)
    return value


def config_to_json(config: ModelConfig) -> dict:
    """Triton's JSON form of a config: proto field names, enum names, every field
    present (defaults included), 64-bit integers as JSON numbers."""
    d = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)
    return _fix_int64(d, config.DESCRIPTOR)


def config_to_pbtxt(config: ModelConfig) -> str:
    """Text-format form (what a config.pbtxt holds)."""
    return text_format.MessageToString(config)
