"""A `tuili serve` subprocess for benchmarks: started on free ports, its ports read from its ready
file, stopped with SIGTERM (and killed if it does not drain in time)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence


def start_server(repo: str, workdir: str, extra: Sequence[str] = (), timeout: float = 180.0):
    """(process, {"http": port, "grpc": port, "metrics": port}) of a server on ``repo``; its log is
    ``workdir/server.log``."""
    ready = os.path.join(workdir, "ready.json")
    if os.path.exists(ready):  # a previous server's ports: wait for this one's
        os.remove(ready)
    with open(os.path.join(workdir, "server.log"), "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tuili.cli", "serve", "--model-repository", repo,
                                 "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--ready-file", ready,
                                 *extra], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start; see {log.name}")
        time.sleep(0.1)
    with open(ready) as f:
        return proc, json.load(f)


def stop_server(proc: subprocess.Popen, grace: float = 60.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
