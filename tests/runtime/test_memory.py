"""Memory: values released after their last reader; kernels' scratch buffers owned by the runtime."""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

import tuili
from tuili.ir import from_model_proto
from tuili.ops import registry
from tuili.ops.conv import conv
from tuili.runtime import executor
from tuili.runtime.memory import ScratchPool
from tuili.runtime.planner import Planner


def test_each_intermediate_is_released_after_its_last_reader(conv_net):
    plan = Planner(from_model_proto(conv_net)).build()
    conv_, relu, depthwise, add = plan.steps
    c1, r, c2 = conv_.outs[0], relu.outs[0], depthwise.outs[0]
    assert relu.free == (c1,)                # read by relu only
    assert depthwise.free == ()              # r is read again by add
    assert set(add.free) == {c2, r}
    assert all(s not in step.free for step in plan.steps for s in (*plan.inputs, *plan.outputs))


def test_scratch_pool_reuses_per_thread_and_respects_its_budget():
    pool = ScratchPool(max_bytes=1 << 20)
    a, fresh = pool.buffer("k", (64, 64), np.float32)
    assert fresh
    b, fresh = pool.buffer("k", (64, 64), np.float32)
    assert b is a and not fresh
    assert pool.buffer("other", (64, 64), np.float32)[0] is not a
    assert pool.buffer("k", (64, 64), np.float64)[0] is not a
    other_thread = []
    t = threading.Thread(target=lambda: other_thread.append(pool.buffer("k", (64, 64), np.float32)))
    t.start()
    t.join()
    assert other_thread[0][0] is not a and other_thread[0][1]  # threads never share a buffer
    big1, big2 = pool.buffer("big", (1 << 18,), np.float32)[0], pool.buffer("big", (1 << 18,), np.float32)[0]
    assert big1 is not big2  # more than half the budget: allocated per call
    for i in range(40):      # 40 x 64 KiB > 1 MiB: the oldest are dropped
        pool.buffer(("fill", i), (128, 128), np.float32)
    assert pool.held_bytes() <= 1 << 20
    assert pool.buffer("k", (64, 64), np.float32)[1]


def test_conv_takes_its_temporaries_from_the_plans_pool(conv_net):
    pool = ScratchPool()
    plan = Planner(from_model_proto(conv_net), scratch=pool, prepare=False).build()  # the numpy kernel
    ref = ort.InferenceSession(conv_net.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for _ in range(3):  # the reused padded buffers keep their borders right across runs
        x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(executor.run(plan, [x])[0], ref.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    assert pool.held_bytes() > 0
    assert type(registry.scratch()) is registry.Scratch  # unbound again after the run


def test_kernel_called_directly_gets_fresh_buffers():
    x = np.ones((1, 2, 4, 4), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = conv(x, w, pads=[1, 1, 1, 1])
    assert y[0, 0, 0, 0] == 8 and y[0, 0, 1, 1] == 18
    assert registry.scratch().buffer("k", (2,), np.float32)[1]  # no session: every buffer is fresh


def test_concurrent_conv_runs_match_one_thread(conv_net):
    sess = tuili.InferenceSession(conv_net)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((n % 3 + 1, 3, 8, 8)).astype(np.float32) for n in range(6)]
    want = [sess.run(None, {"x": x})[0] for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(15):
            got[i] = sess.run(None, {"x": xs[i]})[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_session_holds_its_weights_once(conv_net, tmp_path, monkeypatch):
    """A model the session loads is optimized in place, the graph (and the loaded file's bytes) is
    dropped after planning, and constants a kernel packed for itself stay only as zero-memory
    stand-ins: results unchanged."""
    import gc
    import weakref

    from tuili.runtime import session as session_module

    path = tmp_path / "m.onnx"
    path.write_bytes(conv_net.SerializeToString())
    loaded = []

    def load(src):
        g = tuili.load(src)
        loaded.append(weakref.ref(g))
        return g

    monkeypatch.setattr(session_module, "load", load)
    sess = tuili.InferenceSession(str(path))
    gc.collect()
    assert loaded and loaded[0]() is None  # no graph kept: inputs, outputs and metadata are detached
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(conv_net.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want[0], rtol=1e-4, atol=1e-4)
    assert [a.name for a in sess.get_inputs()] == ["x"] and sess.get_outputs()[0].shape == ["N", 4, 8, 8]
    packed = [step for step in sess.plan.steps if getattr(step.fn, "absorbs", ())]
    if packed:  # torch with oneDNN present: the weights live in the packed kernels only
        weights = {slot: v for slot, v in sess.plan.consts if isinstance(v, np.ndarray) and v.ndim == 4}
        assert weights and all(v.strides == (0, 0, 0, 0) for v in weights.values())


def test_a_graph_the_caller_passes_is_not_rewritten(conv_net):
    g = tuili.load(conv_net)

    def snapshot():
        return ([(n.op_type, [v.name for v in n.inputs]) for n in g.nodes],
                {k: v.const.tobytes() for k, v in g.initializers.items()})

    before = snapshot()
    tuili.InferenceSession(g).run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert snapshot() == before


def test_a_cnn_on_onednn_never_imports_numba(conv_net, tmp_path):
    """numba and LLVM cost ~56 MB resident: imported only when a numba kernel runs."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_net.SerializeToString())
    code = ("import sys, numpy as np, tuili\n"
            f"s = tuili.InferenceSession({str(path)!r})\n"
            "s.run(None, {'x': np.ones((1, 3, 8, 8), np.float32)})\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
