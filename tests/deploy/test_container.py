"""deploy/Dockerfile, checked statically (no image can be built here): a slim Python base, a non-root
user, a health check on the readiness path, and the ports and arguments of the KServe runtime."""
from __future__ import annotations

import re

from tests.deploy.manifests import dockerfile, exec_form, manifests
from tuili.cli import build_parser


def _all(op: str) -> list[str]:
    return [args for o, args in dockerfile() if o == op]


def _runtime_args():
    (c,) = manifests()["servingruntime.yaml"]["spec"]["containers"]
    return build_parser().parse_args(["serve", *c["args"]])


def test_known_instructions_only():
    known = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD",
             "ARG", "LABEL"}
    assert {op for op, _ in dockerfile()} <= known


def test_slim_python_base_images():
    bases = [args.split()[0] for args in _all("FROM")]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim", b) for b in bases), bases


def test_runs_as_a_non_root_user():
    stage = [op for op, _ in dockerfile()]
    final = len(stage) - stage[::-1].index("FROM")  # instructions of the last stage start here
    users = [args for op, args in dockerfile()[final:] if op == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # the user the image runs as is the one the KServe runtime asks for
    (c,) = manifests()["servingruntime.yaml"]["spec"]["containers"]
    assert int(user) == c["securityContext"]["runAsUser"]


def test_healthcheck_probes_readiness_on_the_http_port():
    (check,) = _all("HEALTHCHECK")
    assert "CMD" in check and "NONE" not in check
    assert f"127.0.0.1:{_runtime_args().http_port}/v2/health/ready" in check


def test_exposed_ports_and_default_args_match_the_runtime():
    runtime = _runtime_args()
    exposed = {int(p.split("/")[0]) for args in _all("EXPOSE") for p in args.split()}
    assert exposed == {runtime.http_port, runtime.grpc_port, runtime.metrics_port}
    (entry,), (cmd,) = _all("ENTRYPOINT"), _all("CMD")
    assert exec_form(entry) == ["tuili", "serve"]
    image = build_parser().parse_args(["serve", *exec_form(cmd)])
    assert vars(image) == vars(runtime)  # `docker run` and KServe start the same server


def test_entry_point_is_installed_by_the_package():
    import tomllib

    from tests.deploy.manifests import ROOT

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tuili"] == "tuili.cli:main"
