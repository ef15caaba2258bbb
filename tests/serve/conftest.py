"""Fixtures for the server tests: a small repository built once per session, and real
`tuili serve` subprocesses on 127.0.0.1 with ephemeral ports, always torn down."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

from tests.serve.repo_builder import build_test_repository


class ServerProcess:
    """A `tuili serve` subprocess. ``http``/``grpc``/``metrics`` are "127.0.0.1:PORT" strings."""

    def __init__(self, repo: str, *extra: str, workdir: str):
        self.ready_file = os.path.join(workdir, f"ready-{time.monotonic_ns()}.json")
        self.log_path = os.path.join(workdir, f"server-{time.monotonic_ns()}.log")
        cmd = [sys.executable, "-m", "tuili.cli", "serve", "--model-repository", repo, "--host", "127.0.0.1",
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-file", self.ready_file, *extra]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"tuili serve exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tuili serve did not become ready:\n{self.log()}")
            time.sleep(0.05)
        with open(self.ready_file) as f:
            ports = json.load(f)
        self.http = f"127.0.0.1:{ports['http']}"
        self.grpc = f"127.0.0.1:{ports['grpc']}"
        self.metrics = f"127.0.0.1:{ports['metrics']}"

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_repository")
    facts = build_test_repository(str(root))
    return str(root), facts


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory):
    """Start extra servers: ``server_factory(repo, *cli_args)``; all are stopped at session end."""
    started = []
    workdir = str(tmp_path_factory.mktemp("servers"))

    def start(repo: str, *extra: str) -> ServerProcess:
        s = ServerProcess(repo, *extra, workdir=workdir)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def server(test_repo, server_factory):
    """One shared server (model control mode none) per test module."""
    s = server_factory(test_repo[0])
    yield s
    s.stop()


def copy_repo(src: str, dst: str, models: list[str] | None = None) -> str:
    os.makedirs(dst, exist_ok=True)
    for m in models or os.listdir(src):
        shutil.copytree(os.path.join(src, m), os.path.join(dst, m))
    return dst
