"""A Ray cluster of several node processes on this machine, for tests and benchmarks.

Ray binds its ports on every interface and probes for a public address, so the cluster runs only
inside private namespaces (`isolated` re-runs a command under ``unshare``): a network namespace
where only loopback exists and a pid namespace, whose processes all die with its first process —
so `ray stop` there sees and stops only this cluster, and nothing outlives the run.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from tuili.errors import ConfigError

log = logging.getLogger(__name__)

ISOLATED_ENV = "TUILI_RAY_ISOLATED"  # set in the namespaces `isolated` creates
# A node that misses heartbeats for ~15 s is declared dead and its raylet exits: on a small shared
# machine under load that happens to healthy nodes. Give them a minute.
PATIENT_HEALTH_CHECKS = {"RAY_health_check_period_ms": "3000", "RAY_health_check_timeout_ms": "20000",
                         "RAY_health_check_failure_threshold": "20", "RAY_gcs_rpc_server_reconnect_timeout_s": "120"}
# Ray settings that cut the CPU each request costs (measured, docs/scale-out.md): tensors up to 8 MB
# travel inside the task's message instead of through the object store (the raylets moved every
# ResNet-18 input between nodes: ~7 ms of CPU per request), and no copy of every log line to stderr
# for the log monitor to tail.
LEAN_SETTINGS = {"RAY_max_direct_call_object_size": str(8 * 2**20), "RAY_SERVE_LOG_TO_STDERR": "0"}
# Where Ray looks for a token of its own: a ~/.ray/auth_token another Ray instance left turns token
# authentication on in some of the cluster's processes and not others (InvalidAuthToken).
RAY_AUTH_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def isolated(argv: Sequence[str], timeout: float, log_path: str = os.devnull, env: dict | None = None) -> int:
    """Run ``argv`` in new network (loopback only) and pid namespaces, its output into ``log_path``;
    needs root (or user namespaces). Returns its exit status."""
    script = 'ip link set lo up && exec "$@"'
    full_env = {**os.environ, **(env or {}), ISOLATED_ENV: "1"}
    with open(log_path, "ab") as out:
        return subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", script, "sh", *argv],
                              stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=full_env).returncode


def can_isolate() -> bool:
    """Whether this machine lets us create the namespaces (root, an `unshare` binary, `ip`)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    try:
        return isolated(["true"], timeout=30) == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalRayCluster:
    """``nodes`` Ray nodes on 127.0.0.1: `ray start --head` and `ray start --address` workers, each
    with ``cpus_per_node`` CPUs and a small object store. Only inside `isolated` namespaces.

    Nothing of the user's is read or written: the nodes (and the processes they start) get a HOME
    of their own under the cluster's temp dir, and token authentication is off for the nodes and
    for this process's driver alike (the cluster sees only loopback in its private namespace)."""

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1, object_store_bytes: int = 150 * 2**20, port: int = 6379,
                 env: dict[str, str] | None = None):
        if os.environ.get(ISOLATED_ENV) != "1":
            raise ConfigError("LocalRayCluster runs only inside the namespaces tuili.deploy.local.isolated creates "
                              "(Ray binds every interface; `ray stop` must see only this cluster)")
        self.nodes, self.cpus, self.store, self.port = nodes, cpus_per_node, object_store_bytes, port
        self.env = {**LEAN_SETTINGS, **(env or {})}  # for the nodes and every process they start (RAY_* settings)
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.address = f"127.0.0.1:{port}"
        self.home = os.path.join(self.temp_dir, "home")
        os.makedirs(self.home)

    def _ray(self, *args: str) -> None:
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        env = {k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARS}
        r = subprocess.run([ray, *args], capture_output=True, text=True, timeout=180, env={**env, **self.env, "HOME": self.home})
        if r.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def start(self) -> LocalRayCluster:
        os.environ.update({**PATIENT_HEALTH_CHECKS, **self.env})  # for the nodes and for this process's driver alike
        os.environ["RAY_AUTH_MODE"] = "disabled"
        for var in RAY_AUTH_VARS:
            os.environ.pop(var, None)
        common = ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", f"--object-store-memory={self.store}",
                  "--disable-usage-stats"]
        self._ray("start", "--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}", *common)
        for _ in range(self.nodes - 1):
            self._ray("start", f"--address={self.address}", *common)
        log.info("local Ray cluster: %d node(s) at %s", self.nodes, self.address)
        return self

    def stop(self) -> None:
        import ray

        if ray.is_initialized():  # a driver left connected would abort this process once its cluster is gone
            ray.shutdown()
        try:
            self._ray("stop", "--force")  # in our pid namespace: only this cluster's processes
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
