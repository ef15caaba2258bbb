"""Building the Ray Serve application (tuili.deploy.ray.build_app): no cluster needed, only Ray."""
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


def test_one_deployment_per_model_behind_the_ingress(tmp_path):
    from tuili.deploy.ray import INGRESS, build_app

    app = build_app(_repo(tmp_path, "a", "b"))
    ingress = app._bound_deployment
    assert ingress.name == INGRESS and ingress.ray_actor_options["num_cpus"] == 0
    handles = ingress.init_args[0]
    assert sorted(handles) == ["a", "b"]
    assert handles["a"]._bound_deployment.name == "a"
    args = handles["a"]._bound_deployment.init_args
    assert args[1:3] == ("a", [("a", None)])
    # the revision follows the model's files: a redeploy after a change rolls new replicas out
    os.utime(f"{tmp_path}/a/1/model.onnx", ns=(1, 1))
    again = build_app(str(tmp_path))._bound_deployment.init_args[0]
    assert again["a"]._bound_deployment.init_args[3] != args[3]
    assert again["b"]._bound_deployment.init_args[3] == handles["b"]._bound_deployment.init_args[3]


def test_unknown_model_and_reserved_name_are_refused(tmp_path):
    from tuili.deploy.ray import INGRESS, build_app

    repo = _repo(tmp_path, "a", INGRESS)
    with pytest.raises(ModelNotFoundError, match="model\\(s\\) nope not in the repository"):
        build_app(repo, ["nope"])
    with pytest.raises(ConfigError, match="may not be named"):
        build_app(repo)
