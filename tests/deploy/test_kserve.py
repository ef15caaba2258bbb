"""The KServe runtime and example InferenceServices in deploy/kserve/, validated against KServe's own
CRD schemas (vendored from kserve/kserve, tests/deploy/data/kserve/SOURCE.txt), and `tuili serve`
doing what KServe expects of the container: the model repository at /mnt/models, the port flags,
the probe paths, a graceful exit on SIGTERM."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jsonschema
import pytest

from tests.deploy.manifests import crd_schema, manifests
from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.cli import build_parser

RUNTIMES = ("servingruntime.yaml", "clusterservingruntime.yaml")
SERVICES = ("inferenceservice-onnx.yaml", "inferenceservice-triton-grpc.yaml")


def validate(doc: dict) -> None:
    schema = crd_schema(doc["kind"])
    assert doc["apiVersion"] == schema["apiVersion"], f"{doc['kind']} is served as {schema['apiVersion']}"
    jsonschema.Draft7Validator(schema["schema"]).validate(doc)


def container(runtime: dict) -> dict:
    (c,) = runtime["spec"]["containers"]
    return c


@pytest.mark.parametrize("name", RUNTIMES + SERVICES)
def test_manifest_is_valid_for_kserve(name):
    validate(manifests()[name])


def test_validation_catches_mistakes():
    """The check can fail: a misspelt field, a wrong type, a missing required field."""
    runtime = manifests()["servingruntime.yaml"]
    for break_it in (lambda d: container(d).update(readinesProbe=container(d).pop("readinessProbe")),
                     lambda d: d["spec"].update(multiModel="no"),
                     lambda d: d["spec"]["supportedModelFormats"][0].pop("name")):
        broken = copy.deepcopy(runtime)
        break_it(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


def test_cluster_runtime_is_the_namespaced_one():
    docs = manifests()
    assert docs["clusterservingruntime.yaml"]["spec"] == docs["servingruntime.yaml"]["spec"]
    assert docs["clusterservingruntime.yaml"]["metadata"]["name"] == docs["servingruntime.yaml"]["metadata"]["name"]


def test_runtime_formats_protocols_and_probes():
    runtime = manifests()["servingruntime.yaml"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert {"onnx", "triton", "pytorch"} <= formats
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    c = container(runtime)
    args = build_parser().parse_args(["serve", *c["args"]])  # every flag is one `tuili serve` takes
    assert args.model_repository == ["/mnt/models"] and args.host == "0.0.0.0"
    assert [p["containerPort"] for p in c["ports"]] == [args.http_port]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": args.http_port}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    annotations = runtime["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == args.metrics_port
    assert c["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["runAsUser"] != 0


@pytest.mark.parametrize("name", SERVICES)
def test_services_ask_for_what_the_runtime_offers(name):
    docs = manifests()
    runtime, service = docs["servingruntime.yaml"], docs[name]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    if model["protocolVersion"] == "grpc-v2":  # KServe routes gRPC to the container port named h2c
        args = build_parser().parse_args(["serve", *container(runtime)["args"]])
        assert [(p["name"], p["containerPort"]) for p in model["ports"]] == [("h2c", args.grpc_port)]


def _kserve_args(mnt_models: str, ready_file: str) -> list[str]:
    """The runtime's container args, for a test: its repository path replaced by ``mnt_models``,
    ports by ephemeral ones, 0.0.0.0 by loopback."""
    out = []
    for a in container(manifests()["servingruntime.yaml"])["args"]:
        flag, _, value = a.partition("=")
        if flag.endswith("-port"):
            value = "0"
        elif value == "/mnt/models":
            value = mnt_models
        elif flag == "--host":
            value = "127.0.0.1"
        out.append(f"{flag}={value}")
    return [*out, "--ready-file", ready_file]


def _get(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.serve
def test_server_runs_as_kserve_starts_it(tmp_path):
    """The storage initializer's layout, the runtime's flags, the readiness probe, then SIGTERM:
    not ready at once, the request in flight answered, a clean exit."""
    mnt = tmp_path / "mnt" / "models"  # what the storage initializer leaves: a Triton-layout repository
    _save(add_sub_model(), str(mnt / "add_sub" / "1" / "model.onnx"))
    _write(str(mnt / "add_sub" / "config.pbtxt"), 'name: "add_sub"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tuili.cli", "serve", *_kserve_args(str(mnt), str(ready))],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        ports = json.loads(ready.read_text())
        assert all(ports[k] > 0 for k in ("http", "grpc", "metrics"))
        base = f"http://127.0.0.1:{ports['http']}"
        runtime = container(manifests()["servingruntime.yaml"])
        assert _get(base + runtime["readinessProbe"]["httpGet"]["path"]) == 200
        assert _get(base + runtime["livenessProbe"]["httpGet"]["path"]) == 200
        assert _get(base + "/v2/models/add_sub/ready") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped" in (tmp_path / "server.log").read_text()
