"""Read a model configuration: config.pbtxt (protobuf text format) or Triton's JSON form.

Every syntax or unknown-field problem becomes a :class:`ModelConfigError` naming the file, the line
and column, and the field path (``input[1].dims``), with a hint about what to do.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import json_format, text_format

from tuili.model_config.locate import Locator, ModelConfigError
from tuili.model_config.protos import ModelConfig
from tuili.model_config.protos import model_config_pb2 as mc
from tuili.model_config.validate import validate_model_config

log = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
# protobuf names types by their full name ("inference.ModelConfig"); a config author knows them without it
_PACKAGE_PREFIX = re.compile(rf"\b{re.escape(mc.DESCRIPTOR.package)}\.")


def _clean_protobuf_message(msg: str) -> str:
    msg = re.sub(r"^\d+:\d+ : ", "", msg)
    return _PACKAGE_PREFIX.sub("", msg)


def _hint(reason: str) -> str:
    """What to do about a protobuf text-format error."""
    m = re.search(r'Enum type "([\w.]+)" has no value named', reason)
    if m:
        enum = _find_enum(m.group(1))
        if enum is not None:
            return "valid values: " + ", ".join(v.name for v in enum.values)
    if "has no field named" in reason:
        return "check the spelling; the fields are those of Triton's model configuration (model_config.proto)"
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
                       model_dir: str | Path | None = None, allow_paths_outside: bool = False) -> ModelConfig:
    """Parse config.pbtxt text; errors are ModelConfigError naming ``source``,
    line, column and field. ``validate`` runs :func:`validate_model_config`."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        field = None
        if line is not None:
            loc = Locator(text, ModelConfig.DESCRIPTOR)
            field = loc.field_at(line, col or 1)
        reason = _clean_protobuf_message(str(exc))
        raise ModelConfigError(f"{reason} ({_hint(reason)})", file=source, line=line, column=col,
                               field=field) from None
    if validate:
        validate_model_config(config, model_dir=model_dir, source=source, text=text,
                              allow_paths_outside=allow_paths_outside)
    return config


def parse_model_config_json(text: str | Mapping, source: str = "<config JSON>", *,
                            validate: bool = True, model_dir: str | Path | None = None,
                            allow_paths_outside: bool = False) -> ModelConfig:
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
        validate_model_config(config, model_dir=model_dir, source=source, allow_paths_outside=allow_paths_outside)
    return config


def load_model_config(model_dir: str | Path, *, validate: bool = True, allow_paths_outside: bool = False) -> ModelConfig:
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
        validate_model_config(config, model_dir=model_dir, source=str(path), text=text,
                              allow_paths_outside=allow_paths_outside)
    return config
