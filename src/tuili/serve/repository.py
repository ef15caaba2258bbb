"""Model repository in Triton's layout.

    <repository>/<model>/config.pbtxt           (optional: auto-completed from the model if missing)
    <repository>/<model>/<version>/<model file> (version = a positive integer directory name)

``plan`` reads a model's config, refuses what the server does not implement
(tuili.model_config.support) and picks its versions (version_policy: latest N, all, specific);
``load_instances`` loads one version's instance group through its backend and completes the
config from the backend's metadata (``autocomplete``). Both are blocking and are called from a
thread.

Every file a config names stays inside its model's directory (tuili.model_config.paths) unless
the repository is created with ``allow_paths_outside=True``. A load request that sends the model's
files (Triton's ``file:<path>`` parameters) has them written into a private temporary model
directory (``loading_from``), never into the repository.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from tuili.backends.base import BACKEND_PLATFORM, Backend, backend_class, create_backend, resolve_backend_name
from tuili.errors import ConfigError, InvalidInputError, ModelNotFoundError
from tuili.model_config.paths import resolve_inside
from tuili.serve.sequence import SequenceSettings

log = logging.getLogger(__name__)


@dataclass
class LoadPlan:
    name: str
    model_dir: str
    config: object  # ModelConfig (partial until autocomplete)
    versions: list[tuple[str, str]]  # (version, directory), oldest first
    backend: str = ""
    platform: str = ""
    is_ensemble: bool = False
    dependencies: list[str] = field(default_factory=list)
    signature: object = None
    config_override: bool = False
    #: fields set but without effect here (Triton too serves without them): for the log and the model's reason
    warnings: list[str] = field(default_factory=list)
    allow_paths_outside: bool = False


def _version_dirs(model_dir: str) -> dict[int, str]:
    out = {}
    try:
        entries = os.listdir(model_dir)
    except OSError:
        return out
    for e in entries:
        if e.isdigit() and int(e) > 0 and os.path.isdir(os.path.join(model_dir, e)):
            out[int(e)] = os.path.join(model_dir, e)
    return out


def select_versions(config, available: list[int]) -> list[int]:
    """Apply the config's version_policy (default: latest 1)."""
    available = sorted(available)
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if which == "all":
        return available
    if which == "specific":
        wanted = [int(v) for v in policy.specific.versions]
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ConfigError(
                f"model {config.name!r}: version_policy.specific lists version(s) {missing} with no directory "
                f"(available: {available or 'none'})"
            )
        return sorted(wanted)
    n = int(policy.latest.num_versions) if which == "latest" else 1
    return available[-max(1, n):] if available else []


class ModelRepository:
    """The model directories of one or more repositories. ``allow_paths_outside`` (the server's
    --allow-paths-outside-repository, for trusted setups) lets configs name files outside their
    model's directory."""

    def __init__(self, paths: list[str], *, allow_paths_outside: bool = False):
        for p in paths:
            if not os.path.isdir(p):
                raise ConfigError(f"--model-repository {p} does not exist or is not a directory")
        self.paths = paths
        self.allow_paths_outside = allow_paths_outside
        self._dirs: dict[str, str] = {}
        # model name -> (its private temporary model directory, the finalizer that removes it)
        self._staged: dict[str, tuple[str, weakref.finalize]] = {}

    def scan(self) -> list[str]:
        """Model names present now (directories of the repositories)."""
        dirs: dict[str, str] = {}
        for root in self.paths:
            try:
                entries = sorted(os.listdir(root))
            except OSError as e:
                log.error("cannot list model repository %s: %s", root, e)
                continue
            for e in entries:
                d = os.path.join(root, e)
                if e.startswith((".", "_")) or not os.path.isdir(d):
                    continue
                if e in dirs:
                    log.warning("model %s exists in two repositories (%s, %s); using the first", e, dirs[e], d)
                    continue
                dirs[e] = d
        self._dirs = dirs
        return sorted(dirs.keys() | self._staged.keys())

    def _dir(self, name: str) -> str | None:
        staged = self._staged.get(name)
        return staged[0] if staged else self._dirs.get(name)

    def known(self) -> set[str]:
        return set(self._dirs) | set(self._staged)

    def model_dir(self, name: str) -> str:
        d = self._dir(name)
        if d is None:
            self.scan()
            d = self._dirs.get(name)
        if d is None:
            raise ModelNotFoundError(f"model {name!r} is not in the repository {', '.join(self.paths)}")
        return d

    def is_ensemble(self, name: str) -> bool:
        d = self._dir(name)
        if not d:
            return False
        p = os.path.join(d, "config.pbtxt")
        try:
            with open(p, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            return False
        return "ensemble_scheduling" in text or '"ensemble"' in text

    def signature(self, name: str):
        """Something that changes when the model's files change (poll mode)."""
        d = self._dir(name)
        if d is None:
            return None
        sig = []
        for root, dirnames, files in os.walk(d):
            dirnames.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                sig.append((os.path.relpath(p, d), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    # ------------------------------------------------------------------ files sent with a load request
    @contextmanager
    def loading_from(self, name: str, files: Mapping[str, bytes] | None) -> Iterator[str]:
        """Make ``name`` load from ``files`` (Triton's ``file:<path>`` load parameters: path relative
        to the model directory -> content), written into a new private temporary model directory,
        or, with no files, from the repository again. Yields the model directory. If the body fails
        the previous source is restored and the new directory removed; if it succeeds the previous
        temporary directory (if any) is removed."""
        staged = self._stage(name, files) if files else None
        previous = self._staged.pop(name, None)
        if staged is not None:
            self._staged[name] = staged
        try:
            yield self.model_dir(name)
        except BaseException:
            self._staged.pop(name, None)
            if previous is not None:
                self._staged[name] = previous
            if staged is not None:
                staged[1]()
            raise
        if previous is not None:
            previous[1]()

    def release(self, name: str) -> None:
        """Remove the files a load request sent for ``name`` (call once it is unloaded)."""
        staged = self._staged.pop(name, None)
        if staged is not None:
            staged[1]()

    def _stage(self, name: str, files: Mapping[str, bytes]) -> tuple[str, weakref.finalize]:
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise InvalidInputError(f"cannot load model {name!r} from files: the model name must be a plain "
                                    f"directory name")
        root = tempfile.mkdtemp(prefix="tuili-load-")  # mode 0700: private to the server's user
        remove = weakref.finalize(self, shutil.rmtree, root, ignore_errors=True)  # at exit at the latest
        model_dir = os.path.join(root, name)
        try:
            os.mkdir(model_dir, 0o700)
            for rel, content in files.items():
                if not rel or os.path.isabs(rel):
                    raise InvalidInputError(f"load parameter 'file:{rel}': the path must be relative to the model "
                                            f"directory, e.g. 'file:1/model.onnx'")
                path = resolve_inside(model_dir, rel, field=f"file:{rel}")
                if path == os.path.realpath(model_dir):
                    raise InvalidInputError(f"load parameter 'file:{rel}' names the model directory, not a file")
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(content)
        except BaseException:
            remove()
            raise
        log.info("model %s: %d file(s) of the load request written to %s", name, len(files), model_dir)
        return model_dir, remove

    # ------------------------------------------------------------------ loading
    def plan(self, name: str, config_json: str | None = None) -> LoadPlan:
        from tuili import model_config as cfg
        from tuili.model_config.support import check_supported

        d = self.model_dir(name)
        sig = self.signature(name)
        outside = self.allow_paths_outside
        text = source = None
        if config_json:
            source = f"config parameter of the load request for {name!r}"
            config = cfg.parse_model_config_json(config_json, source=source, model_dir=d, allow_paths_outside=outside)
            if not config.name:
                config.name = name
            elif config.name != name:
                raise ConfigError(f"the config given to load {name!r} names model {config.name!r}; they must match")
        else:
            config = cfg.load_model_config(d, allow_paths_outside=outside)
            source = os.path.join(d, cfg.CONFIG_FILENAME)
            text = _read_text(source)
        is_ens = config.platform == "ensemble" or config.HasField("ensemble_scheduling")
        versions = _version_dirs(d)
        if is_ens:
            warnings = check_supported(config, frozenset(), source=source, text=text)  # an ensemble reads no parameter
            # An ensemble has no model files; Triton still wants a version directory, we accept none (version 1).
            chosen = select_versions(config, list(versions)) or [1]
            deps = []
            for st in config.ensemble_scheduling.step:
                if st.model_name not in deps:
                    deps.append(st.model_name)
            return LoadPlan(name, d, config, [(str(v), versions.get(v, d)) for v in chosen], "", "ensemble", True, deps, sig,
                            bool(config_json), _warned(name, warnings), outside)
        if not versions:
            raise ConfigError(f"model {name!r} has no version directory in {d}; put the model file in {os.path.join(d, '1')}/")
        chosen = select_versions(config, list(versions))
        if not chosen:
            raise ConfigError(f"model {name!r}: version_policy selects no version (available: {sorted(versions)})")
        backend = resolve_backend_name(config.backend, config.platform, versions[chosen[-1]])
        warnings = check_supported(config, backend_class(backend).parameter_keys, source=source, text=text)
        if config.model_transaction_policy.decoupled and backend != "python":
            raise ConfigError(f"model {name!r}: field 'model_transaction_policy.decoupled': decoupled is not implemented "
                              f"by the {backend} backend, which answers every request once (python models answer through a "
                              f"response sender); remove it")
        platform = config.platform or BACKEND_PLATFORM.get(backend, backend)
        return LoadPlan(name, d, config, [(str(v), versions[v]) for v in chosen], backend, platform, False, [], sig,
                        bool(config_json), _warned(name, warnings), outside)

    def load_instances(self, plan: LoadPlan, version_dir: str, new_backend: Callable[[str], Backend] = create_backend):
        """Load the instance group of one version: returns (completed config, [backend instances]).
        ``new_backend(name)`` makes one unloaded instance (a thread's backend, or a worker process's)."""
        from tuili import model_config as cfg

        config = plan.config
        count = sum(max(1, int(g.count)) for g in config.instance_group) or 1
        instances = []
        try:
            first = _new_instance(new_backend, plan, version_dir, config, 0, count)
            instances.append(first)
            supports_batching = plan.backend in ("onnxruntime", "tuili", "pytorch")
            inputs, outputs = first.inputs, first.outputs
            if config.HasField("sequence_batching"):  # the batcher's tensors are not the client's: kept out of the config
                settings = SequenceSettings(config, plan.model_dir, plan.allow_paths_outside)
                if plan.backend != "python":  # a python model takes whatever tensors it is given
                    settings.check_model(plan.name, inputs, outputs)
                inputs = [s for s in inputs if s.name not in settings.hidden_inputs]
                outputs = [s for s in outputs if s.name not in settings.hidden_outputs]
            config = cfg.autocomplete(config, inputs, outputs, supports_batching, model_dir=plan.model_dir,
                                      allow_paths_outside=plan.allow_paths_outside)
            if not config.backend and not config.platform:
                config.backend = plan.backend
                if plan.backend in ("onnxruntime", "pytorch"):
                    config.platform = plan.platform
            for i in range(1, count):
                instances.append(_new_instance(new_backend, plan, version_dir, config, i, count))
        except BaseException:
            for b in instances:
                try:
                    b.unload()
                except Exception:
                    log.exception("unloading a half-loaded instance of %s failed", plan.name)
            raise
        return config, instances



def _new_instance(new_backend: Callable[[str], Backend], plan: LoadPlan, version_dir: str, config, index: int,
                  count: int) -> Backend:
    b = new_backend(plan.backend)
    b.model_name = plan.name
    b.instance_index = index
    b.instance_count = count
    b.allow_paths_outside = plan.allow_paths_outside
    b.load(plan.model_dir, version_dir, config)
    return b


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _warned(name: str, warnings: list[str]) -> list[str]:
    for w in warnings:
        log.warning("model %s: %s", name, w)
    return warnings
