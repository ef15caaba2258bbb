"""Triton's system shared-memory extension against a real `tuili serve`, driven by the official
client helpers (tritonclient.utils.shared_memory) over HTTP and gRPC: register / status /
unregister, inputs read from and outputs written into regions, bad requests named, regions
unregistered while a request runs, no mapping or /dev/shm entry left behind, CUDA refused."""
from __future__ import annotations

import concurrent.futures as cf
import os
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tests.serve.conftest import copy_repo
from tests.serve.repo_builder import pending_requests, wait_for
from tuili.serve.shm import OFF_LOOP_BYTES

F32 = 16 * 4  # bytes of one [1, 16] FP32 tensor


@pytest.fixture
def regions():
    """Make regions with unique keys (tests run in parallel); all destroyed at the end."""
    made = []

    def make(byte_size: int):
        key = f"/tuili_test_{uuid.uuid4().hex[:12]}"
        h = shm.create_shared_memory_region(key.strip("/"), key, byte_size)
        made.append(h)
        return key, h

    yield make
    for h in made:
        shm.destroy_shared_memory_region(h)


@pytest.fixture
def clients(server):
    h, g = th.InferenceServerClient(server.http), tg.InferenceServerClient(server.grpc)
    yield h, g
    h.unregister_system_shared_memory()
    h.close()
    g.close()


def _inputs(mod, a, b, region):
    """add_sub's two inputs, both read from ``region`` (INPUT0 at 0, INPUT1 at 64)."""
    i0, i1 = mod.InferInput("INPUT0", [1, 16], "FP32"), mod.InferInput("INPUT1", [1, 16], "FP32")
    i0.set_shared_memory(region, F32)
    i1.set_shared_memory(region, F32, offset=F32)
    return [i0, i1]


def _error(fn) -> str:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.message()


@pytest.mark.parametrize("mod", [th, tg], ids=["http", "grpc"])
def test_inputs_and_outputs_in_shared_memory(server, clients, regions, mod):
    c = clients[0] if mod is th else clients[1]
    in_key, hin = regions(2 * F32)
    out_key, hout = regions(2 * F32)
    a, b = np.arange(16, dtype=np.float32).reshape(1, 16), np.full((1, 16), 2.0, np.float32)
    shm.set_shared_memory_region(hin, [a, b])
    c.register_system_shared_memory("in", in_key, 2 * F32)
    c.register_system_shared_memory("out", out_key, 2 * F32)
    o0, o1 = mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")
    o0.set_shared_memory("out", F32)
    o1.set_shared_memory("out", F32, offset=F32)
    result = c.infer("add_sub", _inputs(mod, a, b, "in"), outputs=[o0, o1])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(hout, np.float32, [1, 16]), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(hout, np.float32, [1, 16], offset=F32), a - b)
    out = result.get_output("OUTPUT0")
    if mod is th:  # as Triton: name, datatype and shape only (its C++ client reads "parameters" as binary data)
        assert out["shape"] == [1, 16] and "data" not in out and "parameters" not in out
    else:
        assert list(out.shape) == [1, 16] and "shared_memory_region" in out.parameters
        assert result.get_response().raw_output_contents == [b"", b""]


@pytest.mark.parametrize("mod", [th, tg], ids=["http", "grpc"])
def test_shared_memory_mixed_with_ordinary_tensors(clients, regions, mod):
    """One input and one output in shared memory, the others on the wire (gRPC: raw contents
    belong to the inputs not in shared memory, in order)."""
    c = clients[0] if mod is th else clients[1]
    key, h = regions(2 * F32)
    b = np.full((1, 16), 5.0, np.float32)
    shm.set_shared_memory_region(h, [b], offset=F32)
    c.register_system_shared_memory("mixed", key, 2 * F32)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    i0, i1 = mod.InferInput("INPUT0", [1, 16], "FP32"), mod.InferInput("INPUT1", [1, 16], "FP32")
    i0.set_data_from_numpy(a)
    i1.set_shared_memory("mixed", F32, offset=F32)
    o0, o1 = mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")
    o0.set_shared_memory("mixed", F32)
    result = c.infer("add_sub", [i0, i1], outputs=[o0, o1])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h, np.float32, [1, 16]), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("mod", [th, tg], ids=["http", "grpc"])
def test_bytes_tensors_in_shared_memory(clients, regions, mod):
    c = clients[0] if mod is th else clients[1]
    text = np.array([b"shared", b"memory"], dtype=object)
    data = serialize_byte_tensor(text)
    key, h = regions(256)
    shm.set_shared_memory_region(h, [data])
    c.register_system_shared_memory("text", key, 256)
    i = mod.InferInput("TEXT", [2], "BYTES")
    i.set_shared_memory("text", len(data.item()))
    o = mod.InferRequestedOutput("TEXT_OUT")
    o.set_shared_memory("text", 128, offset=128)
    c.infer("upper", [i], outputs=[o])
    assert list(shm.get_contents_as_numpy(h, np.object_, [2], offset=128)) == [b"SHARED", b"MEMORY"]


@pytest.mark.parametrize("mod", [th, tg], ids=["http", "grpc"])
def test_large_tensors_cross_shared_memory_off_the_event_loop(clients, regions, mod):
    """Over OFF_LOOP_BYTES in and out: copied in a worker thread, unchanged (and the server answers
    other clients meanwhile, as the health probe after it shows)."""
    c = clients[0] if mod is th else clients[1]
    rng = np.random.default_rng(0)
    text = np.array([bytes(rng.integers(97, 123, 90, dtype=np.uint8)) for _ in range(20_000)], dtype=object)
    data = serialize_byte_tensor(text).item()
    assert len(data) > OFF_LOOP_BYTES
    key, h = regions(2 * len(data))
    shm.set_shared_memory_region(h, [np.frombuffer(data, np.uint8)])
    c.register_system_shared_memory("big", key, 2 * len(data))
    i = mod.InferInput("TEXT", [len(text)], "BYTES")
    i.set_shared_memory("big", len(data))
    o = mod.InferRequestedOutput("TEXT_OUT")
    o.set_shared_memory("big", len(data), offset=len(data))
    c.infer("upper", [i], outputs=[o])
    got = shm.get_contents_as_numpy(h, np.object_, [len(text)], offset=len(data))
    assert list(got) == [t.upper() for t in text] and c.is_server_live()


def test_register_status_unregister(clients, regions):
    h, g = clients
    key, _ = regions(4096 + 100)
    h.register_system_shared_memory("r1", key, 100, offset=4096 + 0)
    g.register_system_shared_memory("r2", key, 64, offset=10)
    assert h.get_system_shared_memory_status() == [
        {"name": "r1", "key": key, "offset": 4096, "byte_size": 100},
        {"name": "r2", "key": key, "offset": 10, "byte_size": 64}]
    st = g.get_system_shared_memory_status("r2").regions["r2"]
    assert (st.key, st.offset, st.byte_size) == (key, 10, 64)
    assert "already in manager" in _error(lambda: h.register_system_shared_memory("r1", key, 10))
    g.unregister_system_shared_memory("r1")
    assert [r["name"] for r in h.get_system_shared_memory_status()] == ["r2"]
    assert "Unable to find" in _error(lambda: h.get_system_shared_memory_status("r1"))
    h.unregister_system_shared_memory("never-registered")  # as in Triton: not an error
    g.unregister_system_shared_memory()
    assert h.get_system_shared_memory_status() == []


def test_bad_registrations_are_named(clients, regions):
    h, g = clients
    key, _ = regions(128)
    gone = f"/tuili_test_{uuid.uuid4().hex[:12]}"
    assert "no shared-memory object" in _error(lambda: h.register_system_shared_memory("x", gone, 64))
    assert "runs past the end" in _error(lambda: h.register_system_shared_memory("x", key, 100, offset=64))
    assert "byte_size" in _error(lambda: g.register_system_shared_memory("x", key, 0))
    for bad in ("/../../etc/passwd", "/a/b", "/", "/.."):
        assert "'key'" in _error(lambda bad=bad: h.register_system_shared_memory("x", bad, 8))
    assert h.get_system_shared_memory_status() == []


@pytest.mark.parametrize("mod", [th, tg], ids=["http", "grpc"])
def test_bad_shared_memory_requests_are_client_errors(clients, regions, mod):
    c = clients[0] if mod is th else clients[1]
    key, h = regions(2 * F32)
    c.register_system_shared_memory("small", key, 2 * F32)
    a = np.zeros((1, 16), np.float32)

    def infer_with(region, size, offset, output=None):
        i0, i1 = mod.InferInput("INPUT0", [1, 16], "FP32"), mod.InferInput("INPUT1", [1, 16], "FP32")
        i0.set_shared_memory(region, size, offset)
        i1.set_data_from_numpy(a)
        outputs = None
        if output:
            o = mod.InferRequestedOutput("OUTPUT0")
            o.set_shared_memory(*output)
            outputs = [o]
        return lambda: c.infer("add_sub", [i0, i1], outputs=outputs)

    msg = _error(infer_with("nowhere", F32, 0))
    assert "Unable to find shared memory region: 'nowhere'" in msg and "INPUT0" in msg
    msg = _error(infer_with("small", F32, F32 + 4))
    assert "runs past the end" in msg and "'small'" in msg and "shared_memory_offset" in msg
    msg = _error(infer_with("small", F32 - 4, 0))
    assert "shared_memory_byte_size is 60" in msg and "needs 64" in msg
    msg = _error(infer_with("small", F32, 0, ("small", F32 - 4, 0)))
    assert "OUTPUT0" in msg and "at least 64" in msg
    msg = _error(infer_with("small", F32, 0, ("small", F32, 2 * F32)))
    assert "OUTPUT0" in msg and "runs past the end" in msg
    infer_with("small", F32, 0, ("small", F32, F32))()  # and a good one is served
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h, np.float32, [1, 16], offset=F32), a + a)


def test_output_region_unregistered_while_the_request_runs(server, clients, regions):
    """The request fails naming the region and never writes into memory the client released."""
    h, _ = clients
    key, region = regions(4)
    shm.set_shared_memory_region(region, [np.array([-1.0], np.float32)])
    h.register_system_shared_memory("mid", key, 4)
    x = th.InferInput("X", [1], "FP32")
    x.set_data_from_numpy(np.array([0.6], np.float32))  # sleepy sleeps that long
    y = th.InferRequestedOutput("Y")
    y.set_shared_memory("mid", 4)
    with cf.ThreadPoolExecutor(1) as pool:
        running = pool.submit(_error, lambda: th.InferenceServerClient(server.http).infer("sleepy", [x], outputs=[y]))
        wait_for(lambda: pending_requests(server, "sleepy") >= 1)
        h.unregister_system_shared_memory("mid")
        msg = running.result(30)
    assert "'mid' was unregistered while the request ran" in msg and "'Y'" in msg
    assert shm.get_contents_as_numpy(region, np.float32, [1])[0] == -1.0
    assert h.is_server_live()


def test_no_mapping_or_dev_shm_entry_is_left_behind(server, clients):
    """Registering maps the client's object, unregistering unmaps it; the server never unlinks it
    (it is the client's), so once the client destroys its regions nothing is left."""
    h, g = clients
    keys = [f"/tuili_test_{uuid.uuid4().hex[:12]}" for _ in range(5)]
    handles = [shm.create_shared_memory_region(k, k, 4096) for k in keys]
    for i, key in enumerate(keys):
        (h if i % 2 else g).register_system_shared_memory(f"leak{i}", key, 4096)
    assert all(key in _mapped(server) for key in keys)
    h.unregister_system_shared_memory("leak0")
    g.unregister_system_shared_memory()
    assert not any(key in _mapped(server) for key in keys)
    assert all(os.path.exists(f"/dev/shm{key}") for key in keys)  # still there: the client's
    for handle in handles:
        shm.destroy_shared_memory_region(handle)
    assert not any(os.path.exists(f"/dev/shm{key}") for key in keys)


def test_the_server_exit_does_not_unlink_client_regions(test_repo, server_factory, regions, tmp_path):
    s = server_factory(copy_repo(test_repo[0], str(tmp_path / "repo"), ["add_sub"]))
    key, _ = regions(64)
    th.InferenceServerClient(s.http).register_system_shared_memory("kept", key, 64)
    s.stop()
    assert os.path.exists(f"/dev/shm{key}")


def test_cuda_shared_memory_is_refused(server, clients):
    """Registering is refused (no GPU); status lists no region and unregistering succeeds, as a
    client's clean-up (perf_analyzer unregisters every CUDA region when it ends) expects."""
    h, g = clients
    assert "no GPU" in _error(lambda: h.register_cuda_shared_memory("gpu", "aGFuZGxl", 0, 64))
    with pytest.raises(InferenceServerException) as e:
        g.register_cuda_shared_memory("gpu", "aGFuZGxl", 0, 64)
    assert e.value.status() == str(grpc.StatusCode.UNAVAILABLE) and "no GPU" in e.value.message()
    assert h.get_cuda_shared_memory_status() == []
    assert list(g.get_cuda_shared_memory_status().regions) == []
    h.unregister_cuda_shared_memory()
    g.unregister_cuda_shared_memory()
    h.unregister_cuda_shared_memory("gpu")
    assert "system_shared_memory" in h.get_server_metadata()["extensions"]


def _mapped(server) -> str:
    with open(f"/proc/{server.proc.pid}/maps") as f:
        return f.read()
