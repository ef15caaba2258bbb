"""Bin-packing placement (serve/placement.py): budgets never exceeded, packings within the list-scheduling
bound, on synthetic item sets, on a real repository measured in fresh processes, applied by the server."""
from __future__ import annotations

import asyncio
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.serve.repo_builder import _save, _write, add_sub_model, python_model
from tuili.cli import main
from tuili.errors import ConfigError
from tuili.serve.core import InferenceServer
from tuili.serve.placement import Measurement, available_cores, check_cores, measure, pack, parse_bytes

MiB = 1 << 20


def _m(name, count=1, mem=10 * MiB, extra=0, compute=1e-3, isolation="thread", backend="onnxruntime"):
    return Measurement(name, "1", backend, isolation, count, mem, extra, mem + extra + 50 * MiB, compute)


def _check(plan, budget):
    assert plan.makespan <= plan.upper_bound + 1e-12
    assert plan.makespan >= plan.lower_bound - 1e-12
    if budget is not None:
        assert plan.memory <= budget
    assert all(0 <= p.core < plan.cores for p in plan.placed)


measurements = st.lists(
    st.builds(_m, st.text("abcdefgh", min_size=1, max_size=3), st.integers(1, 4), st.integers(1, 300).map(lambda n: n * MiB),
              st.integers(0, 100).map(lambda n: n * MiB), st.floats(0, 0.05),
              st.sampled_from(["thread", "process"]), st.sampled_from(["onnxruntime", "tuili"])),
    min_size=0, max_size=12, unique_by=lambda m: m.model)


@given(measurements, st.integers(1, 8), st.one_of(st.none(), st.integers(1, 2000).map(lambda n: n * MiB)))
def test_budget_never_exceeded_and_within_the_bound(ms, cores, budget):
    plan = pack(ms, cores, budget)
    _check(plan, budget)
    for m in ms:
        n = len(plan.instances(m.model, "1"))
        key = f"{m.model}/1"
        assert (n == 0) == (key in plan.refused)
        assert n <= m.count
        if n < m.count:  # every reduction is reported with its reason
            assert any(d.startswith(key) for d in plan.decisions)
    if budget is None:
        assert len(plan.placed) == sum(m.count for m in ms)


def test_replicas_dropped_largest_first_then_models_refused():
    ms = [_m("big", count=3, mem=100 * MiB), _m("small", count=3, mem=10 * MiB)]
    plan = pack(ms, 2, 250 * MiB)  # 3*100 + 3*10 does not fit: drop big replicas first
    assert len(plan.instances("big", "1")) == 2 and len(plan.instances("small", "1")) == 3
    assert plan.memory == 230 * MiB and "big/1: one replica dropped" in plan.decisions[0]
    plan = pack(ms + [_m("huge", mem=500 * MiB)], 2, 250 * MiB)
    assert "huge/1" in plan.refused and "more than the memory budget" in plan.refused["huge/1"]
    assert len(plan.instances("big", "1")) == 2
    plan = pack([_m("a", extra=30 * MiB), _m("b", extra=50 * MiB)], 1, 100 * MiB)
    assert plan.shared_bytes == 50 * MiB and plan.memory == 70 * MiB  # one backend's libraries counted once


def test_replicas_spread_over_cores_and_lpt_balances():
    plan = pack([_m("a", count=2, compute=5), _m("b", count=2, compute=5), _m("c", compute=1)], 2)
    assert {p.core for p in plan.instances("a", "1")} == {0, 1} == {p.core for p in plan.instances("b", "1")}
    assert sorted(plan.loads()) == [10, 11]
    plan = pack([_m(f"m{i}", compute=c) for i, c in enumerate([5, 4, 3, 3, 2, 1])], 2)  # LPT: 9 / 9
    assert plan.loads() == [9, 9] and plan.lower_bound == 9


def test_bad_flags_are_errors():
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("512MiB") == 512 * MiB and parse_bytes("1000") == 1000
    for bad in ("two gigs", "", "-1G", "0"):
        with pytest.raises(ConfigError, match="not a memory size"):
            parse_bytes(bad)
    for bad in (0, len(available_cores()) + 1):
        with pytest.raises(ConfigError, match="--cores"):
            check_cores(bad)
    with pytest.raises(SystemExit):
        main(["plan", "/nonexistent", "--memory-budget", "lots"])
    with pytest.raises(SystemExit):
        main(["serve", "--model-repository", "/nonexistent", "--cores", "0"])


@pytest.fixture
def small_repo(tmp_path):
    root = str(tmp_path / "repo")
    _save(add_sub_model(), f"{root}/add_sub/1/model.onnx")
    _write(f"{root}/add_sub/config.pbtxt", """
        name: "add_sub"
        backend: "onnxruntime"
        max_batch_size: 8
        instance_group [ { count: 3 kind: KIND_CPU } ]
    """)
    python_model(root, "echo", """
        import triton_python_backend_utils as pb_utils
        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                        for r in requests]
    """)
    return root


def test_real_repository_measured_packed_and_cached(small_repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUILI_PLACEMENT_CACHE", str(tmp_path / "cache"))
    _write(f"{small_repo}/broken/config.pbtxt", 'name: "broken"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    _write(f"{small_repo}/broken/1/model.onnx", "not an onnx file")
    ms = {m.model: m for m in measure([small_repo])}
    assert set(ms) == {"add_sub", "echo"}  # broken: logged, left out
    assert ms["add_sub"].isolation == "thread" and ms["echo"].isolation == "process" and ms["add_sub"].count == 3
    assert ms["add_sub"].compute_s > 0 and ms["echo"].compute_s > 0
    assert ms["echo"].process_bytes > ms["echo"].instance_bytes >= 0
    assert len(os.listdir(tmp_path / "cache")) == 2
    assert measure([small_repo]) == list(ms.values())  # from the cache
    for budget in (None, 10 * ms["echo"].process_bytes, ms["echo"].process_bytes // 2):
        _check(pack(list(ms.values()), 2 if len(available_cores()) >= 2 else 1, budget), budget)
    assert main(["plan", small_repo, "--cores", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cores"] == 1 and len(out["per_core"][0]["instances"]) == 4
    assert out["makespan_s"] <= out["upper_bound_s"]


def test_server_applies_the_plan(small_repo):
    cores = min(2, len(available_cores()))
    plan = pack([_m("add_sub", count=3, mem=100 * MiB), _m("echo", mem=500 * MiB, isolation="process", backend="python")],
                cores, 250 * MiB)
    assert "echo/1" in plan.refused and len(plan.instances("add_sub", "1")) == 2

    async def main_():
        core = InferenceServer(small_repo, "explicit", placement=plan)
        await core.start()
        try:
            await core.load_model("add_sub")
            mv = core.models.get("add_sub")
            assert len(mv.runner.instances) == 2
            assert mv.config.parameters["intra_op_thread_count"].string_value == str(max(1, cores // 2))
            with pytest.raises(ConfigError, match="placement plan refused"):
                await core.load_model("echo")
        finally:
            await core.stop()

    asyncio.run(main_())


@pytest.mark.skipif(len(available_cores()) < 2, reason="pinning needs two cores")
def test_process_instances_pinned_to_their_cores(small_repo):
    _write(f"{small_repo}/echo/config.pbtxt", """
        name: "echo"
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
    """)
    plan = pack([_m("echo", count=2, isolation="process", backend="python")], 2)
    cpus = available_cores()

    async def main_():
        core = InferenceServer(small_repo, "explicit", placement=plan)
        await core.start()
        try:
            await core.load_model("echo")
            workers = [b._link.proc.pid for b in core.models.get("echo").runner.instances]
            assert sorted(next(iter(os.sched_getaffinity(pid))) for pid in workers) == cpus[:2]
        finally:
            await core.stop()

    asyncio.run(main_())


def test_tuili_serve_applies_and_logs_the_plan(small_repo, server_factory, tmp_path, monkeypatch):
    import httpx

    monkeypatch.setenv("TUILI_PLACEMENT_CACHE", str(tmp_path / "cache"))
    budget = 200 * MiB  # the python model's worker (~60 MiB) and add_sub's three instances fit
    srv = server_factory(small_repo, "--memory-budget", str(budget), "--cores", "1")
    with httpx.Client(base_url=f"http://{srv.http}", timeout=30) as http:
        assert http.get("/v2/health/ready").status_code == 200
        stats = http.get("/v2/models/add_sub/config").json()
        assert sum(g["count"] for g in stats["instance_group"]) == 3
        assert stats["parameters"]["intra_op_thread_count"]["string_value"] == "1"
    log = srv.log()
    srv.stop()
    assert "placement on 1 core(s)" in log and "add_sub/1#2" in log and "list-scheduling bound" in log
