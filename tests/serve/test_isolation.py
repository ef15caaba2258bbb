"""Instances in worker processes: the same answers as in-process instances (numbers, BYTES, results
larger than the shared-memory region), per-request errors kept apart, config checked, and
load/unload cycles that leave no worker process, no shared-memory segment and bounded RSS."""
from __future__ import annotations

import glob
import os
import time

import numpy as np
import pytest
import tritonclient.http as th

from tests.serve.repo_builder import UPPER_PY, _save, _write, add_sub_model
from tuili.backends.base import create_backend
from tuili.backends.worker import (
    ProcessInstance,
    execution_timeout_s,
    idempotent,
    instance_isolation,
    layout,
    load_timeout_s,
    read,
    write,
)
from tuili.errors import ConfigError, InvalidInputError
from tuili.model_config import parse_model_config

BIG_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "N").as_numpy().reshape(-1)[0])
            if n < 0:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("n < 0", pb_utils.TritonError.INVALID_ARG)))
                continue
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.arange(n, dtype=np.float64))]))
        return out
'''


def _load(backend: str, model_dir: str, config_text: str, process: bool):
    cfg = parse_model_config(config_text, validate=False)
    b = ProcessInstance(backend) if process else create_backend(backend)
    b.model_name = cfg.name
    b.load(model_dir, os.path.join(model_dir, "1"), cfg)
    return b


UPPER_CONFIG = '''name: "upper" backend: "python" max_batch_size: 0
    input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "TEXT_OUT" data_type: TYPE_STRING dims: [ -1 ] }, { name: "LENGTH" data_type: TYPE_INT32 dims: [ -1 ] } ]'''
BIG_CONFIG = '''name: "big" backend: "python" max_batch_size: 0
    input [ { name: "N" data_type: TYPE_INT64 dims: [ 1 ] } ]
    output [ { name: "Y" data_type: TYPE_FP64 dims: [ -1 ] } ]'''


def test_process_instance_answers_like_the_in_process_one(tmp_path):
    _write(f"{tmp_path}/upper/1/model.py", UPPER_PY)
    _save(add_sub_model(), f"{tmp_path}/add_sub/1/model.onnx")
    add_sub_config = 'name: "add_sub" backend: "onnxruntime" max_batch_size: 8'
    text = np.array([b"abc", b"", b"\xff\x00z"], dtype=object)
    a = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    for backend, d, config, feeds in [("python", "upper", UPPER_CONFIG, {"TEXT": text}),
                                      ("onnxruntime", "add_sub", add_sub_config, {"INPUT0": a, "INPUT1": a[::-1]})]:
        local = _load(backend, f"{tmp_path}/{d}", config, process=False)
        remote = _load(backend, f"{tmp_path}/{d}", config, process=True)
        try:
            assert [s.name for s in remote.inputs] == [s.name for s in local.inputs]
            assert remote.wants_request_list == local.wants_request_list
            want, got = local.infer(feeds), remote.infer(feeds)
            assert want.keys() == got.keys()
            for k in want:
                assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
                assert got[k].tolist() == want[k].tolist()
        finally:
            local.unload()
            remote.unload()


def test_results_larger_than_the_region_and_per_request_errors(tmp_path):
    _write(f"{tmp_path}/big/1/model.py", BIG_PY)
    b = _load("python", f"{tmp_path}/big", BIG_CONFIG, process=True)
    try:
        n = 400_000  # 3.2 MB: more than the 1 MiB the results region starts with
        for _ in range(2):  # inline the first time, through the grown region the second
            out = b.infer_many([{"N": np.array([n], np.int64)}, {"N": np.array([-1], np.int64)}, {"N": np.array([3], np.int64)}])
            np.testing.assert_array_equal(out[0]["Y"], np.arange(n, dtype=np.float64))
            assert isinstance(out[1], InvalidInputError) and "n < 0" in str(out[1])
            np.testing.assert_array_equal(out[2]["Y"], [0.0, 1.0, 2.0])
    finally:
        b.unload()


def test_isolation_config():
    py = parse_model_config('name: "p" backend: "python"', validate=False)
    onnx = parse_model_config('name: "o" backend: "onnxruntime"', validate=False)
    assert instance_isolation(py, "python") == "process" and instance_isolation(onnx, "onnxruntime") == "thread"
    asked = parse_model_config('name: "o" parameters { key: "instance_isolation" value: { string_value: "process" } } '
                               'parameters { key: "execution_timeout_ms" value: { string_value: "250" } }', validate=False)
    assert instance_isolation(asked, "onnxruntime") == "process" and execution_timeout_s(asked) == 0.25
    with pytest.raises(ConfigError, match="instance_isolation is 'fork'"):
        instance_isolation(parse_model_config('name: "o" parameters { key: "instance_isolation" value: { string_value: "fork" } }',
                                              validate=False), "onnxruntime")
    with pytest.raises(ConfigError, match="execution_timeout_ms needs instance_isolation"):
        instance_isolation(parse_model_config('name: "o" parameters { key: "execution_timeout_ms" value: { string_value: "5" } }',
                                              validate=False), "onnxruntime")
    with pytest.raises(ConfigError, match="load_timeout_ms needs instance_isolation"):
        instance_isolation(parse_model_config('name: "o" parameters { key: "load_timeout_ms" value: { string_value: "5" } }',
                                              validate=False), "onnxruntime")
    assert load_timeout_s(py, 600.0) == 600.0 and load_timeout_s(parse_model_config(
        'name: "p" parameters { key: "load_timeout_ms" value: { string_value: "1500" } }', validate=False), 600.0) == 1.5
    with pytest.raises(ConfigError, match="load_timeout_ms is '1.5'; give a whole number of milliseconds"):
        load_timeout_s(parse_model_config('name: "o" parameters { key: "load_timeout_ms" value: { string_value: "1.5" } }',
                                          validate=False), 0.0)
    with pytest.raises(ConfigError, match="whole number of milliseconds"):
        execution_timeout_s(parse_model_config('name: "o" parameters { key: "execution_timeout_ms" value: { string_value: "-1" } }',
                                               validate=False))


def test_idempotent_config():
    def config(value: str, isolation: str = "process"):
        return parse_model_config(f'name: "o" parameters {{ key: "idempotent" value: {{ string_value: "{value}" }} }} '
                                  f'parameters {{ key: "instance_isolation" value: {{ string_value: "{isolation}" }} }}', validate=False)

    assert idempotent(config("true")) and idempotent(config("1")) and not idempotent(config("false"))
    assert not idempotent(parse_model_config('name: "o"', validate=False))
    assert instance_isolation(config("true"), "onnxruntime") == "process"
    with pytest.raises(ConfigError, match="idempotent needs instance_isolation"):
        instance_isolation(config("true", "thread"), "onnxruntime")
    assert instance_isolation(config("false", "thread"), "onnxruntime") == "thread"
    with pytest.raises(ConfigError, match="parameter idempotent is 'yes'"):
        idempotent(config("yes"))


def test_tensors_cross_the_region_unchanged():
    """Every layout the hot path copies: contiguous or not, odd dtypes, empty, 0-d, BYTES, str and
    other plain items; an object tensor of anything else is refused, naming the type."""
    rng = np.random.default_rng(1)
    grid = rng.standard_normal((4, 6)).astype(np.float32)
    sets = [{"f32": grid, "strided": grid[:, ::2], "fortran": np.asfortranarray(grid), "f16": grid.astype(np.float16),
             "bool": grid > 0, "i8": np.arange(-3, 3, dtype=np.int8), "empty": np.zeros((0, 5), np.float64),
             "scalar": np.array(7, np.int64), "big_endian": grid.astype(">f4")},
            {"bytes": np.array([b"a", b"", b"\x00\xff"], dtype=object), "str": np.array(["x", "yz"], dtype=object),
             "mixed": np.array([[1, None], [2.5, np.float32(0.5)]], dtype=object), "no_items": np.empty((2, 0), object),
             "list": [[1, 2], [3, 4]]}]
    metas, writes, need = layout(sets)
    buf = memoryview(bytearray(need))
    write(buf, writes)
    for tensors, meta in zip(sets, metas):
        got = read(buf, meta, copy=True)
        assert got.keys() == tensors.keys()
        for k, want in tensors.items():
            want = np.asarray(want)
            assert got[k].dtype == want.dtype and got[k].shape == want.shape, k
            assert got[k].tolist() == want.tolist(), k
    with pytest.raises(TypeError, match="items of type object"):
        layout([{"odd": np.array([object()], dtype=object)}])


# ----------------------------------------------------------------------------- load/unload cycles
def _children(pid: int) -> set[int]:
    out = set()
    for f in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(f) as fh:
            out |= {int(p) for p in fh.read().split()}
    return out


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _shm_mapped(pid: int) -> list[str]:
    """Shared-memory segments the process still maps (multiprocessing names them psm_*)."""
    with open(f"/proc/{pid}/maps") as f:
        return [line.split()[-1] for line in f if "/dev/shm/psm_" in line]


@pytest.fixture(scope="module")
def cycling(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("cycle_repo"))
    _write(f"{root}/upper/1/model.py", UPPER_PY)
    _write(f"{root}/upper/config.pbtxt", UPPER_CONFIG.replace("name: \"upper\"", "name: \"upper\" instance_group [ { count: 2 } ]"))
    _save(add_sub_model(), f"{root}/add_sub/1/model.onnx")
    _write(f"{root}/add_sub/config.pbtxt", 'name: "add_sub" backend: "onnxruntime" max_batch_size: 8 '
           'parameters { key: "instance_isolation" value: { string_value: "process" } }')
    srv = server_factory(root, "--model-control-mode", "explicit")
    yield srv
    srv.stop()


def _cycle(c) -> None:
    for name in ("upper", "add_sub"):
        c.load_model(name)
    i = th.InferInput("TEXT", [2], "BYTES")
    i.set_data_from_numpy(np.array([b"ab", b"c"], dtype=object))
    assert c.infer("upper", [i]).as_numpy("TEXT_OUT").tolist() == [b"AB", b"C"]
    a = np.ones((1, 16), np.float32)
    ins = [th.InferInput("INPUT0", [1, 16], "FP32"), th.InferInput("INPUT1", [1, 16], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(a)
    assert c.infer("add_sub", ins).as_numpy("OUTPUT0").tolist() == [[2.0] * 16]
    for name in ("upper", "add_sub"):
        c.unload_model(name)


def _settled(pid: int, baseline: set[int]) -> bool:
    for _ in range(100):
        if _children(pid) <= baseline:
            return True
        time.sleep(0.05)
    return False


def test_load_unload_cycles_leave_no_workers_and_no_shared_memory(cycling):
    c = th.InferenceServerClient(cycling.http)
    pid = cycling.proc.pid
    _cycle(c)  # the first cycle starts helpers that stay (multiprocessing's resource tracker)
    assert _settled(pid, _children(pid))
    baseline = _children(pid)
    for _ in range(3):
        _cycle(c)
    assert _settled(pid, baseline), f"worker processes left behind: {_children(pid) - baseline}"
    assert _shm_mapped(pid) == []
    assert "worker process" in cycling.log()


@pytest.mark.slow
def test_rss_growth_over_100_load_unload_cycles_is_bounded(cycling):
    c = th.InferenceServerClient(cycling.http)
    pid = cycling.proc.pid
    for _ in range(10):
        _cycle(c)
    after_10 = _rss_kb(pid)
    for _ in range(90):
        _cycle(c)
    assert _rss_kb(pid) <= after_10 * 1.05, (after_10, _rss_kb(pid))
