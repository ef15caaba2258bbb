"""The tritonclient script the Ray tests run through the Ray ingress (v2_client.check_v2), here against
`tuili serve` on the same kind of repository: one script, both servers (HTTP and gRPC)."""
from __future__ import annotations

import pytest

from tests.deploy.v2_client import MODEL, check_v2, check_v2_grpc
from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.bench.server import start_server, stop_server


@pytest.mark.serve
def test_client_script_against_tuili_serve(tmp_path):
    repo = tmp_path / "repo"
    _save(add_sub_model(), f"{repo}/{MODEL}/1/model.onnx")
    _write(f"{repo}/{MODEL}/config.pbtxt", f'name: "{MODEL}"\nbackend: "onnxruntime"\nmax_batch_size: 8\ndynamic_batching {{ }}\n')
    proc, ports = start_server(str(repo), str(tmp_path))
    try:
        seen = check_v2(f"127.0.0.1:{ports['http']}")
        grpc_seen = check_v2_grpc(f"127.0.0.1:{ports['grpc']}")
    finally:
        stop_server(proc)
    assert seen["errors"]["unknown model"][0] == "404"  # as the Ray ingress answers (tests/deploy/test_ray.py)
    assert grpc_seen["unknown model"][0] == "StatusCode.NOT_FOUND"
