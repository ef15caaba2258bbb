"""The Ray scenario the ray tests check, run as one program inside private namespaces
(tuili.deploy.local.isolated): a 2-node cluster on 127.0.0.1, a repository deployed, the shared
tritonclient script through the ingress, a replica killed under load, a model update rolled out
under load, scale up and down.

    python -m tests.deploy.ray_scenario OUT_DIR      # writes OUT_DIR/result.json
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from tests.deploy.v2_client import MODEL, add_sub_inputs, check_v2, check_v2_grpc
from tests.serve.repo_builder import _save, _write, add_sub_model, python_model

HTTP = "127.0.0.1:8000"
GRPC = ("127.0.0.1", 8001)  # served by the ingress replica
SLOW = "slow"
SLOW_SOURCE = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.2)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
"""


def build_repo(root: str) -> None:
    _save(add_sub_model(), f"{root}/{MODEL}/1/model.onnx")
    _write(f"{root}/{MODEL}/config.pbtxt", f"""
        name: "{MODEL}"
        backend: "onnxruntime"
        max_batch_size: 8
        dynamic_batching {{ }}
        parameters {{ key: "ray" value: {{ string_value: '{{"num_replicas": 2, "num_cpus": 0.5}}' }} }}
    """)
    ray_block = '{"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 1, ' \
                '"downscale_delay_s": 3, "num_cpus": 0.25}'
    python_model(root, SLOW, SLOW_SOURCE, extra_config=f"parameters {{ key: \"ray\" value: {{ string_value: '{ray_block}' }} }}")


def replicas(app: str, deployment: str) -> int:
    from ray import serve

    from tuili.deploy.ray import model_app_name

    status = serve.status().applications[model_app_name(app, deployment)].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def replica_pids(app: str, deployment: str, want: int, exclude: set[int] = frozenset(), timeout: float = 120.0) -> set[int]:
    """Process ids of ``want`` live replicas, none of ``exclude`` (waits up to ``timeout`` s for them)."""
    from ray import serve

    from tuili.deploy.ray import model_app_name

    handle = serve.get_deployment_handle(deployment, app_name=model_app_name(app, deployment))
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pids.add(handle.pid.remote().result(timeout_s=30))
        except Exception:  # a replica that died under us
            pass
        pids -= exclude
        if len(pids) >= want:
            break
        time.sleep(0.05)
    return pids


def under_load(during, settle: float = 2.0, clients: int = 4) -> dict:
    """Clients send add_sub requests while ``during()`` runs and ``settle`` seconds after. Every request
    must end (answered or an error) within the client's timeout: counts of the outcomes."""
    import tritonclient.http as httpclient

    outcomes: list[str] = []
    lock = threading.Lock()
    done = threading.Event()
    x = np.ones((1, 16), np.float32)

    def client():
        c = httpclient.InferenceServerClient(HTTP, network_timeout=30, connection_timeout=10)
        while not done.is_set():
            t0 = time.monotonic()
            try:
                r = c.infer(MODEL, add_sub_inputs(x, x))
                outcome = "ok" if np.all(r.as_numpy("OUTPUT0") == 2) else "wrong answer"
            except Exception as e:  # an error answer: its status, or the exception type (a timeout = hung)
                status = getattr(e, "status", lambda: None)()
                outcome = f"error {status}" if status else f"exception {type(e).__name__}: {e}"
            with lock:
                outcomes.append(outcome)
                if time.monotonic() - t0 > 25:
                    outcomes.append("slow (> 25 s)")
        c.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        during()
        time.sleep(settle)
    finally:
        done.set()
    for t in threads:
        t.join(90)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o] = counts.get(o, 0) + 1
    return {"counts": counts, "hung_clients": sum(t.is_alive() for t in threads)}


def kill_under_load(app: str) -> dict:
    """One of add_sub's two replicas SIGKILLed while clients send requests."""
    victim = sorted(replica_pids(app, MODEL, 2))[0]
    result = under_load(lambda: os.kill(victim, signal.SIGKILL), settle=5.0)
    return {**result, "victim": victim, "pids_after": sorted(replica_pids(app, MODEL, 2, exclude={victim}))}


def update_under_load(app: str, repo: str) -> dict:
    """add_sub's model file changes and the application is deployed again while clients send requests:
    Ray Serve rolls new replicas out; no request may fail."""
    from ray import serve

    from tuili.deploy.ray import build_apps, model_app_name, run_apps

    handle = serve.get_deployment_handle(MODEL, app_name=model_app_name(app, MODEL))
    before = handle.get_revision.remote().result(timeout_s=30)
    old_pids = replica_pids(app, MODEL, 2)

    def redeploy():
        os.utime(f"{repo}/{MODEL}/1/model.onnx")
        run_apps(build_apps(repo, app_name=app, grpc=GRPC))

    result = under_load(redeploy)
    revisions = {handle.get_revision.remote().result(timeout_s=30) for _ in range(20)}
    return {**result, "revision_before": before, "revisions_after": sorted(revisions),
            "old_pids": sorted(old_pids), "pids_after": sorted(replica_pids(app, MODEL, 2, exclude=old_pids))}


def scale_up_and_down(app: str, clients: int = 4, timeout: float = 90.0) -> dict:
    import tritonclient.http as httpclient

    seen = [replicas(app, SLOW)]
    stop = threading.Event()

    def client():
        c = httpclient.InferenceServerClient(HTTP, network_timeout=30, connection_timeout=10)
        inp = httpclient.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.ones(1, np.float32))
        while not stop.is_set():
            try:
                c.infer(SLOW, [inp])
            except Exception:
                pass
        c.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and seen[-1] < 2:
        time.sleep(0.5)
        seen.append(replicas(app, SLOW))
    peak = max(seen)
    stop.set()
    for t in threads:
        t.join(60)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and seen[-1] > 1:
        time.sleep(0.5)
        seen.append(replicas(app, SLOW))
    # the sequence of replica counts seen, without repeats
    steps = [n for i, n in enumerate(seen) if i == 0 or n != seen[i - 1]]
    return {"peak": peak, "final": seen[-1], "steps": steps}


def main(out_dir: str) -> None:
    import ray
    from ray import serve

    from tuili.deploy.local import LocalRayCluster
    from tuili.deploy.ray import LOGGING_CONFIG, build_apps, run_apps

    repo = os.path.join(out_dir, "repo")
    build_repo(repo)
    result: dict = {}
    with LocalRayCluster(nodes=2, cpus_per_node=2) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": 8000, "request_timeout_s": 60}, logging_config=LOGGING_CONFIG)
        run_apps(build_apps(repo, grpc=GRPC))
        result["listening"] = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        result["interfaces"] = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        result["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
        steps = (("client", lambda: check_v2(HTTP)), ("grpc", lambda: check_v2_grpc(f"{GRPC[0]}:{GRPC[1]}")),
                 ("kill", lambda: kill_under_load("tuili")),
                 ("update", lambda: update_under_load("tuili", repo)), ("scale", lambda: scale_up_and_down("tuili")))
        for key, step in steps:
            print(f"scenario: {key} ...", file=sys.stderr, flush=True)
            result[key] = step()
            print(f"scenario: {key}: {result[key]}", file=sys.stderr, flush=True)
        serve.shutdown()
        ray.shutdown()
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
