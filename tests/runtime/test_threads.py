"""runtime.threads: one thread count for BLAS, torch and numba; the default never oversubscribes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import threadpoolctl
import torch

import tuili
from tuili.errors import ConfigError
from tuili.runtime import threads as threads_mod
from tuili.runtime.threads import Threads, available_cores, idle_cores


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def test_limit_sets_blas_and_torch_together_and_restores():
    torch_before, blas_before = torch.get_num_threads(), _blas_threads()
    with Threads(1).limit() as n:
        assert n == 1
        assert torch.get_num_threads() == 1
        assert _blas_threads() == {1}
    assert torch.get_num_threads() == torch_before
    assert _blas_threads() == blas_before


def test_default_never_exceeds_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(threads_mod, "_RECHECK", 0.0)  # every call reads the (patched) load
    t = Threads(None)
    assert t.cap == available_cores() >= 1
    assert 1 <= t.now() <= t.cap
    monkeypatch.setattr(threads_mod, "runnable_elsewhere", lambda: 10_000)  # a machine busy everywhere
    assert idle_cores(8) == 1 and Threads(None).now() == 1
    monkeypatch.setattr(threads_mod, "runnable_elsewhere", lambda: 0)
    assert Threads(None).now() == available_cores()
    monkeypatch.setattr(threads_mod, "runnable_elsewhere", lambda: None)  # unreadable: the cap
    assert Threads(None).now() == available_cores()
    monkeypatch.setattr(threads_mod, "runnable_elsewhere", lambda: 0)
    assert Threads(64).now() == min(64, os.cpu_count())  # an explicit count is a cap, never above the machine
    monkeypatch.setattr(threads_mod, "runnable_elsewhere", lambda: 10_000)
    assert Threads(3).now() == 1  # ... and also leaves busy cores alone


def test_runnable_elsewhere_reads_the_kernel_count():
    n = threads_mod.runnable_elsewhere()
    assert n is None or n >= 0
    assert threads_mod._own_running() >= 1  # at least the caller


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="threads"):
        Threads(bad)


def test_session_threads_and_session_options_map_to_it(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "a"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    a = np.ones((64, 64), np.float32)
    sess = tuili.InferenceSession(model, threads=1)
    assert sess._threads.cap == 1
    np.testing.assert_allclose(sess.run(None, {"a": a})[0], a @ a)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    assert tuili.InferenceSession(model, sess_options=so)._threads.cap == 1
    assert tuili.InferenceSession(model)._threads.fixed is None
