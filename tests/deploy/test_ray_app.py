"""Building the Ray Serve applications (tuili.deploy.ray.build_apps): no cluster needed, only Ray."""
from __future__ import annotations

import os

import pytest

from tests.serve.repo_builder import _save, _write, add_sub_model
from tuili.errors import ConfigError, ModelNotFoundError

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'tuili[ray]'")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _repo(root, *names: str) -> str:
    for name in names:
        _save(add_sub_model(), f"{root}/{name}/1/model.onnx")
        _write(f"{root}/{name}/config.pbtxt", f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 4\n')
    return str(root)


def test_one_application_per_model_then_the_servers(tmp_path):
    from tuili.deploy.ray import INGRESS, build_apps

    apps = build_apps(_repo(tmp_path, "a", "b"), route_prefix="/tuili/")
    assert [(a.name, a.route_prefix) for a in apps] == [("tuili-a", "/tuili/v2/models/a"), ("tuili-b", "/tuili/v2/models/b"),
                                                         ("tuili", "/tuili/")]
    ingress = apps[-1].app._bound_deployment
    assert ingress.name == INGRESS and ingress.ray_actor_options["num_cpus"] == 0
    assert ingress.init_args[0] == {"a": "tuili-a", "b": "tuili-b"}  # the models' applications, for its handles
    model = apps[0].app._bound_deployment
    assert model.name == "a" and model.init_args[1:3] == ("a", [("a", None)])
    # the revision follows the model's files: a redeploy after a change rolls new replicas out
    os.utime(f"{tmp_path}/a/1/model.onnx", ns=(1, 1))
    again = build_apps(str(tmp_path))
    assert again[0].app._bound_deployment.init_args[3] != model.init_args[3]
    assert again[1].app._bound_deployment.init_args[3] == apps[1].app._bound_deployment.init_args[3]


def test_a_models_application_routes_on_the_v2_paths():
    """Ray mounts a model's application at <prefix>/v2/models/<model>; tuili's adapter sees only <prefix>."""
    import asyncio

    from tuili.deploy.ray import _FullPaths

    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    scope = {"type": "http", "path": "/tuili/v2/models/a/ready", "root_path": "/tuili/v2/models/a"}
    asyncio.run(_FullPaths(app, "a")(scope, None, None))
    assert seen[0]["root_path"] == "/tuili" and seen[0]["path"] == scope["path"]
    assert scope["root_path"] == "/tuili/v2/models/a"  # Ray's scope itself is left alone


def test_unknown_model_and_reserved_name_are_refused(tmp_path):
    from tuili.deploy.ray import INGRESS, build_apps

    repo = _repo(tmp_path, "a", INGRESS)
    with pytest.raises(ModelNotFoundError, match="model\\(s\\) nope not in the repository"):
        build_apps(repo, ["nope"])
    with pytest.raises(ConfigError, match="may not be named"):
        build_apps(repo)
