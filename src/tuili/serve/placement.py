"""Bin-packing placement: how many instances of which model run on which core, under a memory budget.

    measure      per model version, in a fresh spawned process: the resident memory one more instance
                 adds (the second instance's growth), the first instance's extra cost (shared libraries,
                 arenas) apart, and the compute of one request (median of a few batch-1 inferences on
                 zero inputs of the config's shapes); cached per hash of the model's files
    pack         instances are items (memory, compute), cores are bins. Memory is a hard constraint:
                 models whose first instance cannot fit are refused, largest first, then replicas
                 beyond a model's first are dropped, largest first, until the rest fits. Compute is balanced over the cores by LPT
                 (largest first, onto the least loaded core), replicas of one model on different cores
                 where that keeps the list-scheduling bound: makespan <= sum/cores + max item.
    Plan         what was decided and why; ``describe`` prints it, ``as_dict`` is its JSON

An instance that runs in the server process (``instance_isolation: thread``) costs its instance
memory, plus once per backend the first instance's extra cost; a process-isolated instance costs a
whole worker process (the measuring process's resident size with one instance loaded).
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field

from tuili.errors import ConfigError

log = logging.getLogger(__name__)

#: inferences timed per model version (after one warm-up)
INFERENCES = 5
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"2G"``, ``"512MiB"``, ``"1.5g"``, ``"1000000"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--memory-budget {text!r} is not a memory size; write e.g. 2G, 512M or 1073741824 (bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def check_cores(cores: int | None) -> int:
    """The number of cores to pack onto (None: all this process may run on)."""
    have = len(available_cores())
    if cores is None:
        return have
    if cores < 1 or cores > have:
        raise ConfigError(f"--cores {cores}: this machine lets the server run on {have} core(s); give 1 to {have}")
    return cores


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# --------------------------------------------------------------------------- measurement
@dataclass
class Measurement:
    """One model version, measured."""

    model: str
    version: str
    backend: str
    isolation: str  # "thread" or "process"
    count: int  # instances its config asks for
    instance_bytes: int  # resident growth of one more instance
    first_extra_bytes: int  # what the first instance costs beyond that (libraries, arenas)
    process_bytes: int  # resident size of a fresh process holding one instance
    compute_s: float | None  # median time of one batch-1 inference; None: not measured (why in note)
    note: str = ""

    @property
    def item_bytes(self) -> int:
        """Memory of one instance as placed: a whole worker process, or its share of the server's."""
        return self.process_bytes if self.isolation == "process" else self.instance_bytes


def resident_bytes() -> int:
    """This process's resident set size, from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def _zeros(spec, batching: bool):
    import numpy as np

    shape = [1 if d < 0 else d for d in spec.shape]
    if batching and shape:
        shape[0] = 1
    if spec.dtype.numpy == np.object_:
        return np.full(shape, b"0", dtype=object)
    return np.zeros(shape, dtype=spec.dtype.numpy)


def _time_inferences(backend, batching: bool) -> float:
    feeds = {s.name: _zeros(s, batching) for s in backend.inputs if not s.optional}
    call = (lambda: backend.infer_many([feeds])) if backend.wants_request_list else (lambda: backend.infer(feeds))
    call()  # warm-up
    times = []
    for _ in range(INFERENCES):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _measure_in_fresh_process(paths: list[str], name: str, allow_outside: bool) -> list[dict]:
    from tuili.backends.base import create_backend
    from tuili.backends.worker import instance_isolation
    from tuili.serve.repository import ModelRepository

    repo = ModelRepository(paths, allow_paths_outside=allow_outside)
    plan = repo.plan(name)
    if plan.is_ensemble:
        return []
    config = plan.config
    count = sum(max(1, int(g.count)) for g in config.instance_group) or 1
    isolation = instance_isolation(config, plan.backend)
    batching = config.max_batch_size > 0
    out = []
    for version, vdir in plan.versions:
        base = resident_bytes()
        loaded = []
        try:
            rss = []
            compute, note = None, ""
            for i in range(2):  # two instances, as two threads of the server would (half the cores each)
                b = create_backend(plan.backend)
                b.model_name, b.instance_index, b.instance_count = name, i, 2
                b.allow_paths_outside = allow_outside
                b.load(plan.model_dir, vdir, config)
                loaded.append(b)
                if i == 0:
                    if config.model_transaction_policy.decoupled or config.HasField("sequence_batching"):
                        note = "compute not measured: decoupled or sequence model"
                    else:
                        try:
                            compute = _time_inferences(b, batching)
                        except Exception as e:  # noqa: BLE001 - a model zeros do not suit: placed by memory only
                            note = f"compute not measured: zero inputs failed ({type(e).__name__}: {e})"[:200]
                elif compute is not None:
                    _time_inferences(b, batching)  # its buffers and arena count too, as the first's did
                rss.append(resident_bytes())
            instance = max(0, rss[1] - rss[0])
            out.append(asdict(Measurement(name, version, plan.backend, isolation, count, instance,
                                          max(0, rss[0] - base - instance), rss[0], compute, note)))
        finally:
            for b in loaded:
                b.unload()
    return out


def _fingerprint(model_dir: str) -> str:
    """A hash of every file of the model (config, versions, labels): the measurement cache's key."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, model_dir).encode() + b"\0")
            # Never read through a link (a target inside the model is hashed as its own file, one outside is
            # refused at load) nor from a FIFO or a device, which could block or never end.
            if os.path.islink(p) or not os.path.isfile(p):
                h.update(os.fsencode(os.readlink(p)) if os.path.islink(p) else b"special")
                continue
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def cache_dir() -> str:
    return os.environ.get("TUILI_PLACEMENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tuili", "placement")


def measure(paths: list[str], names: list[str] | None = None, *, allow_paths_outside: bool = False,
            use_cache: bool = True) -> list[Measurement]:
    """Measure every model (or ``names``) of the repositories, each in a fresh spawned process,
    reusing the cached measurement of a model whose files did not change. A model that fails to load
    is logged and left out (its load fails in the server too)."""
    from tuili.serve.repository import ModelRepository

    repo = ModelRepository(paths, allow_paths_outside=allow_paths_outside)
    names = repo.scan() if names is None else names
    out: list[Measurement] = []
    ctx = multiprocessing.get_context("spawn")
    for name in names:
        if repo.is_ensemble(name):
            continue
        key = os.path.join(cache_dir(), _fingerprint(repo.model_dir(name)) + ".json")
        rows = None
        if use_cache and os.path.exists(key):
            with open(key) as f:
                rows = json.load(f)
        if rows is None:
            try:
                with ctx.Pool(1) as pool:  # fresh: the first instance pays for the libraries
                    rows = pool.apply(_measure_in_fresh_process, (paths, name, allow_paths_outside))
            except Exception as e:  # noqa: BLE001 - the server will refuse it the same way at load
                log.warning("model %s: not measured and not placed: loading it failed: %s", name, e)
                continue
            os.makedirs(cache_dir(), exist_ok=True)
            with open(key, "w") as f:
                json.dump(rows, f)
        out.extend(Measurement(**r) for r in rows)
    return out


# --------------------------------------------------------------------------- packing
@dataclass
class Placed:
    model: str
    version: str
    index: int
    core: int
    memory: int
    compute: float


@dataclass
class Plan:
    cores: int
    memory_budget: int | None
    placed: list[Placed] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)  # every reduction and refusal, with its reason
    refused: dict[str, str] = field(default_factory=dict)  # "model/version" -> reason
    shared_bytes: int = 0  # first-instance costs of the backends that run in the server process

    def instances(self, model: str, version: str) -> list[Placed]:
        return [p for p in self.placed if p.model == model and p.version == version]

    @property
    def memory(self) -> int:
        return self.shared_bytes + sum(p.memory for p in self.placed)

    def loads(self) -> list[float]:
        loads = [0.0] * self.cores
        for p in self.placed:
            loads[p.core] += p.compute
        return loads

    @property
    def makespan(self) -> float:
        return max(self.loads(), default=0.0)

    @property
    def lower_bound(self) -> float:
        """No packing can do better: the average load, or the largest item."""
        items = [p.compute for p in self.placed]
        return max(sum(items) / self.cores, max(items, default=0.0))

    @property
    def upper_bound(self) -> float:
        """List scheduling's guarantee: sum / cores + max item."""
        items = [p.compute for p in self.placed]
        return sum(items) / self.cores + max(items, default=0.0)

    def as_dict(self) -> dict:
        return {"cores": self.cores, "memory_budget": self.memory_budget, "memory": self.memory,
                "shared_bytes": self.shared_bytes, "makespan_s": self.makespan, "lower_bound_s": self.lower_bound,
                "upper_bound_s": self.upper_bound, "decisions": self.decisions, "refused": self.refused,
                "per_core": [{"core": c, "compute_s": load,
                              "instances": [f"{p.model}/{p.version}#{p.index}" for p in self.placed if p.core == c]}
                             for c, load in enumerate(self.loads())],
                "instances": [asdict(p) for p in self.placed]}

    def describe(self) -> str:
        budget = _mib(self.memory_budget) if self.memory_budget else "none"
        lines = [f"placement on {self.cores} core(s), memory {_mib(self.memory)} of budget {budget} "
                 f"(server-process shared {_mib(self.shared_bytes)})"]
        for c, load in enumerate(self.loads()):
            names = ", ".join(f"{p.model}/{p.version}#{p.index}" for p in self.placed if p.core == c) or "-"
            lines.append(f"  core {c}: {load * 1e3:8.3f} ms/request  {names}")
        ratio = self.makespan / self.lower_bound if self.lower_bound else 1.0
        lines.append(f"  makespan {self.makespan * 1e3:.3f} ms, lower bound {self.lower_bound * 1e3:.3f} ms "
                     f"(x{ratio:.2f}), list-scheduling bound {self.upper_bound * 1e3:.3f} ms")
        lines += [f"  - {d}" for d in self.decisions]
        return "\n".join(lines)


def _memory(kept: dict[tuple[str, str], int], by_key: dict[tuple[str, str], Measurement]) -> tuple[int, int]:
    """(total, shared) bytes of ``kept`` instance counts: the instances, plus each in-process backend's
    first-instance cost once."""
    shared: dict[str, int] = {}
    total = 0
    for key, n in kept.items():
        m = by_key[key]
        total += n * m.item_bytes
        if m.isolation == "thread" and n:
            shared[m.backend] = max(shared.get(m.backend, 0), m.first_extra_bytes)
    return total + sum(shared.values()), sum(shared.values())


def pack(measurements: list[Measurement], cores: int, memory_budget: int | None = None) -> Plan:
    """Place the instances the measured models ask for on ``cores`` cores within ``memory_budget``."""
    if cores < 1:
        raise ConfigError(f"cannot place instances on {cores} cores; give at least 1")
    plan = Plan(cores, memory_budget)
    by_key = {(m.model, m.version): m for m in measurements}
    kept = {key: m.count for key, m in by_key.items()}
    if memory_budget is not None:
        # models whose first instance cannot fit beside the others' first instances, largest first
        firsts = dict.fromkeys(kept, 1)
        while firsts and _memory(firsts, by_key)[0] > memory_budget:
            k = max(firsts, key=lambda k: (by_key[k].item_bytes + by_key[k].first_extra_bytes, k))
            del firsts[k], kept[k]
            reason = (f"refused: one instance needs {_mib(by_key[k].item_bytes)} (+ {_mib(by_key[k].first_extra_bytes)} "
                      f"first-instance cost), more than the memory budget {_mib(memory_budget)} leaves")
            plan.refused[f"{k[0]}/{k[1]}"] = reason
            plan.decisions.append(f"{k[0]}/{k[1]}: {reason}")
        # then replicas beyond the first, largest first, until the rest fits (the firsts alone do)
        while _memory(kept, by_key)[0] > memory_budget:
            k = max((k for k, n in kept.items() if n > 1), key=lambda k: (by_key[k].item_bytes, kept[k], k))
            kept[k] -= 1
            plan.decisions.append(f"{k[0]}/{k[1]}: one replica dropped ({_mib(by_key[k].item_bytes)} each, now "
                                  f"{kept[k]} of {by_key[k].count}): the memory budget {_mib(memory_budget)} cannot hold it")
    plan.shared_bytes = _memory(kept, by_key)[1]
    for k, m in by_key.items():
        if m.compute_s is None and k in kept:
            plan.decisions.append(f"{k[0]}/{k[1]}: {m.note or 'compute not measured'}; placed as costing no compute")
    # LPT: largest compute first, onto the least loaded core; a model's replicas on cores it is not on yet
    # when such a core is no more loaded than the average (so the list-scheduling bound still holds)
    items = [(by_key[k].compute_s or 0.0, k, i) for k, n in kept.items() for i in range(n)]
    items.sort(key=lambda t: (-t[0], t[1], t[2]))
    average = sum(c for c, _, _ in items) / cores
    loads = [0.0] * cores
    on: dict[tuple[str, str], set[int]] = {}
    for compute, k, i in items:
        least = min(range(cores), key=lambda c: (loads[c], c))
        fresh = [c for c in range(cores) if c not in on.get(k, set())]
        core = least
        if fresh:
            best = min(fresh, key=lambda c: (loads[c], c))
            if loads[best] <= average:
                core = best
        loads[core] += compute
        on.setdefault(k, set()).add(core)
        plan.placed.append(Placed(k[0], k[1], i, core, by_key[k].item_bytes, compute))
    return plan


def plan_repository(paths: list[str], cores: int | None = None, memory_budget: str | int | None = None, *,
                    allow_paths_outside: bool = False) -> Plan:
    """Measure every model of the repositories and pack them (the errors of bad flags first)."""
    budget = parse_bytes(memory_budget) if isinstance(memory_budget, str) else memory_budget
    n = check_cores(cores)
    return pack(measure(paths, allow_paths_outside=allow_paths_outside), n, budget)


# --------------------------------------------------------------------------- applying a plan
#: the config parameter that sets each backend's engine threads (a config that sets it keeps its own)
THREAD_PARAMETER = {"onnxruntime": "intra_op_thread_count", "tuili": "threads", "pytorch": "threads",
                    "openvino": "INFERENCE_NUM_THREADS"}


def placed_config(plan: Plan, name: str, version: str, backend: str, isolation: str, config):
    """(the config to load ``name``'s ``version`` with, one CPU set per instance) under ``plan``: the
    instance count it kept, and the engine threads of each instance set to its share of the cores (one
    for a worker process, which is pinned to its core; the cores over all placed instances for one in
    the server process).
    A version the plan refused is a ConfigError; one the plan does not know (added to the repository
    after it was made) loads as its config says, (config, None)."""
    key = f"{name}/{version}"
    if key in plan.refused:
        raise ConfigError(f"model {name!r} version {version}: the placement plan {plan.refused[key]}; "
                          f"raise --memory-budget or remove instances of other models")
    placed = sorted(plan.instances(name, version), key=lambda p: p.index)
    if not placed:
        return config, None
    config = type(config).FromString(config.SerializeToString())
    requested = sum(max(1, int(g.count)) for g in config.instance_group) or 1
    if len(placed) != requested:
        if not config.instance_group:
            config.instance_group.add()
        del config.instance_group[1:]
        config.instance_group[0].count = len(placed)
    parameter = THREAD_PARAMETER.get(backend)
    if parameter and not (parameter in config.parameters and config.parameters[parameter].string_value):
        share = 1 if isolation == "process" else max(1, plan.cores // max(1, len(plan.placed)))
        config.parameters[parameter].string_value = str(share)
    cpus = available_cores()
    return config, [{cpus[p.core]} for p in placed]
