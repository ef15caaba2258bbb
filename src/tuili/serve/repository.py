"""Model repository in Triton's layout.

    <repository>/<model>/config.pbtxt           (optional: auto-completed from the model if missing)
    <repository>/<model>/<version>/<model file> (version = a positive integer directory name)

``plan`` reads a model's config and picks its versions (version_policy: latest N, all,
specific); ``load_instances`` loads one version's instance group through its backend and
completes the config from the backend's metadata (S2's ``autocomplete``). Both are blocking
and are called from a thread.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from tuili.backends.base import BACKEND_PLATFORM, create_backend, resolve_backend_name
from tuili.errors import ConfigError, ModelNotFoundError

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
    def __init__(self, paths: list[str]):
        for p in paths:
            if not os.path.isdir(p):
                raise ConfigError(f"--model-repository {p} does not exist or is not a directory")
        self.paths = paths
        self._dirs: dict[str, str] = {}

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
        return list(dirs)

    def known(self) -> set[str]:
        return set(self._dirs)

    def model_dir(self, name: str) -> str:
        d = self._dirs.get(name)
        if d is None:
            self.scan()
            d = self._dirs.get(name)
        if d is None:
            raise ModelNotFoundError(f"model {name!r} is not in the repository {', '.join(self.paths)}")
        return d

    def is_ensemble(self, name: str) -> bool:
        d = self._dirs.get(name)
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
        d = self._dirs.get(name)
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

    # ------------------------------------------------------------------ loading
    def plan(self, name: str, config_json: str | None = None) -> LoadPlan:
        from tuili import model_config as cfg

        d = self.model_dir(name)
        sig = self.signature(name)
        if config_json:
            config = cfg.parse_model_config_json(config_json, source=f"config parameter of the load request for {name!r}", model_dir=d)
            if not config.name:
                config.name = name
            elif config.name != name:
                raise ConfigError(f"the config given to load {name!r} names model {config.name!r}; they must match")
        else:
            config = cfg.load_model_config(d)
        is_ens = config.platform == "ensemble" or config.HasField("ensemble_scheduling")
        versions = _version_dirs(d)
        if is_ens:
            # An ensemble has no model files; Triton still wants a version directory, we accept none (version 1).
            chosen = select_versions(config, list(versions)) or [1]
            deps = []
            for st in config.ensemble_scheduling.step:
                if st.model_name not in deps:
                    deps.append(st.model_name)
            return LoadPlan(name, d, config, [(str(v), versions.get(v, d)) for v in chosen], "", "ensemble", True, deps, sig,
                            bool(config_json))
        if not versions:
            raise ConfigError(f"model {name!r} has no version directory in {d}; put the model file in {os.path.join(d, '1')}/")
        chosen = select_versions(config, list(versions))
        if not chosen:
            raise ConfigError(f"model {name!r}: version_policy selects no version (available: {sorted(versions)})")
        backend = resolve_backend_name(config.backend, config.platform, versions[chosen[-1]])
        platform = config.platform or BACKEND_PLATFORM.get(backend, backend)
        return LoadPlan(name, d, config, [(str(v), versions[v]) for v in chosen], backend, platform, False, [], sig, bool(config_json))

    def load_instances(self, plan: LoadPlan, version_dir: str):
        """Load the instance group of one version: returns (completed config, [backend instances])."""
        from tuili import model_config as cfg

        config = plan.config
        count = sum(max(1, int(g.count)) for g in config.instance_group) or 1
        if any(int(g.kind) == 1 for g in config.instance_group):  # KIND_GPU
            log.warning("model %s asks for KIND_GPU instances; this server runs them on the CPU", plan.name)
        instances = []
        try:
            first = self._new_instance(plan, version_dir, config, 0, count)
            instances.append(first)
            supports_batching = plan.backend in ("onnxruntime", "tuili", "pytorch")
            config = cfg.autocomplete(config, first.inputs, first.outputs, supports_batching, model_dir=plan.model_dir)
            if not config.backend and not config.platform:
                config.backend = plan.backend
                if plan.backend in ("onnxruntime", "pytorch"):
                    config.platform = plan.platform
            for i in range(1, count):
                instances.append(self._new_instance(plan, version_dir, config, i, count))
        except BaseException:
            for b in instances:
                try:
                    b.unload()
                except Exception:
                    log.exception("unloading a half-loaded instance of %s failed", plan.name)
            raise
        return config, instances

    def _new_instance(self, plan: LoadPlan, version_dir: str, config, index: int, count: int):
        b = create_backend(plan.backend)
        b.model_name = plan.name
        b.instance_index = index
        b.instance_count = count
        b.load(plan.model_dir, version_dir, config)
        return b
