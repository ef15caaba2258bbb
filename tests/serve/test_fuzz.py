"""Property tests of a real `tuili serve` under hostile input, over both protocols: whatever a
request holds (tests/serve/fuzz_requests.py), the answer is a client error (HTTP 4xx with a V2
error body, a client-error gRPC code), never a 5xx or INTERNAL/UNKNOWN; the server stays alive;
and a good request after every batch of bad ones still gets the right answer. A few hundred
requests here; benchmarks/fuzz_serve.py sends tens of thousands."""
from __future__ import annotations

import grpc
import httpx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from hypothesis import HealthCheck, given, settings

from tests.serve.fuzz_requests import (
    FUZZ_MAX_BODY,
    GRPC_CLIENT_CODES,
    build_fuzz_repository,
    good_grpc,
    good_http,
    grpc_request,
    http_request,
)

EXAMPLES = 250
GOOD_EVERY = 25
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, server_factory):
    repo = tmp_path_factory.mktemp("fuzz_repo")
    build_fuzz_repository(str(repo))
    s = server_factory(str(repo), "--max-body-bytes", str(FUZZ_MAX_BODY), "--grpc-max-receive-bytes", str(FUZZ_MAX_BODY))
    yield s
    assert s.proc.poll() is None, f"the server died:\n{s.log()[-3000:]}"
    s.stop()


def check_http_answer(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: HTTP {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err, str) and err and len(err) <= 1100, f"{what}: error body {r.text[:300]}"


def test_http_fuzz(fuzz_server):
    tc = th.InferenceServerClient(fuzz_server.http)
    count = 0
    with httpx.Client(base_url=f"http://{fuzz_server.http}", timeout=60) as http:

        @FUZZ
        @given(req=http_request())
        def one(req):
            nonlocal count
            path, body, headers = req
            check_http_answer(http.post(path, content=body, headers=headers), f"POST {path[:80]} {body[:120]!r} {headers}")
            count += 1
            if count % GOOD_EVERY == 0:
                assert good_http(tc), f"a good request failed after {count} bad ones"

        one()
    assert good_http(tc)
    tc.close()


def test_grpc_fuzz(fuzz_server):
    tc = tg.InferenceServerClient(fuzz_server.grpc)
    count = 0
    big = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(fuzz_server.grpc, options=big) as channel:

        @FUZZ
        @given(req=grpc_request())
        def one(req):
            nonlocal count
            method, data = req
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            try:
                call(data, timeout=60)
            except grpc.RpcError as e:
                assert e.code().name in GRPC_CLIENT_CODES, f"{method} {data[:120]!r}: {e.code().name} {e.details()[:300]}"
                assert len(e.details()) <= 1100
            count += 1
            if count % GOOD_EVERY == 0:
                assert good_grpc(tc), f"a good request failed after {count} bad ones"

        one()
    assert good_grpc(tc)
    tc.close()
