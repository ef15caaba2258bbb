"""tuili on a real Ray cluster: two node processes on 127.0.0.1, inside private network and pid
namespaces (tests/deploy/ray_scenario.py runs there, once, for all of these). `make test-ray`.

Checked: the same tritonclient script as against `tuili serve` passes through the Ray ingress; a
replica SIGKILLed under load costs no hung request (each one answered or an error, within the
client's timeout) and is replaced; a changed model file redeployed under load is rolled out
with no failed request; an autoscaled model goes up to two replicas under load and back
to one when idle."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tuili[ray]' (make test-ray)")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    from tuili.deploy.local import can_isolate, isolated

    if not can_isolate():
        pytest.skip("needs network and pid namespaces (unshare, as root) to keep Ray's ports off the machine's interfaces")
    out = tmp_path_factory.mktemp("ray")
    log = out / "scenario.log"
    status = isolated([sys.executable, "-m", "tests.deploy.ray_scenario", str(out)], timeout=900, log_path=str(log))
    result = out / "result.json"
    assert status == 0 and result.exists(), f"the Ray scenario failed ({status}); its log: {log}"
    return json.loads(result.read_text())


def test_cluster_has_two_nodes_on_loopback_only(scenario):
    assert scenario["nodes"] == 2
    interfaces = [line.split(":")[1].strip() for line in scenario["interfaces"].splitlines() if line.strip()]
    assert interfaces == ["lo"]  # whatever Ray binds, only loopback exists where it runs
    listening = [line.split()[3] for line in scenario["listening"].splitlines()[1:] if line.strip()]
    assert any(a.endswith(":8000") for a in listening) and any(a.endswith(":8001") for a in listening), listening


def test_same_client_script_passes_through_the_ingress(scenario):
    errors = scenario["client"]["errors"]
    assert errors["unknown model"][0] == "404"  # as `tuili serve` answers (test_same_client.py)
    assert errors["bad shape"][0] == "400"


def test_grpc_through_the_ingress_replica(scenario):
    assert scenario["grpc"]["unknown model"][0] == "StatusCode.NOT_FOUND"  # as `tuili serve` answers


def test_killed_replica_costs_no_hung_request(scenario):
    kill = scenario["kill"]
    assert kill["hung_clients"] == 0
    assert "slow (> 25 s)" not in kill["counts"]
    assert all(k == "ok" or k.startswith("error 50") for k in kill["counts"]), kill["counts"]
    assert kill["counts"].get("ok", 0) > 0
    assert len(kill["pids_after"]) == 2  # two live replicas again, the victim not among them: replaced


def test_update_rolls_out_without_failed_requests(scenario):
    update = scenario["update"]
    assert update["hung_clients"] == 0 and set(update["counts"]) == {"ok"}, update["counts"]
    assert update["revisions_after"] != [update["revision_before"]] and len(update["revisions_after"]) == 1
    assert len(update["old_pids"]) == 2 and len(update["pids_after"]) == 2  # two new replicas (other pids) serve


def test_autoscaling_goes_up_and_down(scenario):
    scale = scenario["scale"]
    assert scale["peak"] == 2 and scale["final"] == 1, scale["steps"]
    assert scale["steps"][0] == 1
