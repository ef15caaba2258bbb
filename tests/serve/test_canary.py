"""Canary releases on a real `tuili serve`: a failing or slow canary version is rolled back
automatically, requests naming a version bypass the split, shadow copies are compared in the
metrics and never answer the client; refusals of canary parameters where they cannot work."""
from __future__ import annotations

import asyncio
import re
import urllib.request

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.serve.repo_builder import _save, _write, add_sub_model, wait_for
from tuili.errors import ConfigError
from tuili.serve.core import InferenceServer

# Y = X + ADD; version 2 of "failing" raises, version 2 of "slowed" sleeps first
MODEL_PY = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils

ADD, FAIL, SLEEP = {add}, {fail}, {sleep}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            if FAIL:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("canary bug")))
                continue
            time.sleep(SLEEP)
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + ADD)]))
        return out
'''


def _model(root: str, name: str, v2: dict, params: dict) -> None:
    for version, kw in ((1, {"add": 1, "fail": False, "sleep": 0}), (2, v2)):
        _write(f"{root}/{name}/{version}/model.py", MODEL_PY.format(**kw))
    p = " ".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    _write(f"{root}/{name}/config.pbtxt", f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 0
        version_policy: {{ specific: {{ versions: [ 1, 2 ] }} }}
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        {p}
    """)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, server_factory):
    root = str(tmp_path_factory.mktemp("canary_repo"))
    split = {"canary_version": "2", "canary_weight": "50", "canary_min_requests": "10"}
    _model(root, "failing", {"add": 2, "fail": True, "sleep": 0}, split)
    _model(root, "slowed", {"add": 2, "fail": False, "sleep": 0.3}, {**split, "canary_latency_margin": "1"})
    _model(root, "shadowed", {"add": 2, "fail": False, "sleep": 0}, {**split, "canary_weight": "100", "canary_shadow": "true",
                                                                       "canary_min_requests": "1000"})
    s = server_factory(root)
    yield s
    s.stop()


def _infer(c, model: str, value: float, version: str = ""):
    i = th.InferInput("X", [1], "FP32")
    i.set_data_from_numpy(np.array([value], np.float32))
    try:
        r = c.infer(model, [i], model_version=version)
        return r.get_response()["model_version"], float(r.as_numpy("Y")[0])
    except InferenceServerException as e:
        return "error", e.message()


def _metric(srv, name: str, **labels: str) -> float:
    """The sum of the series of ``name`` whose labels include ``labels`` (0 when there is none)."""
    text = urllib.request.urlopen(f"http://{srv.metrics}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"(\w+)\{(.*)\} (\S+)$", line)
        if m and m[1] == name and labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', m[2])).items():
            total += float(m[3])
    return total


def test_a_failing_canary_is_rolled_back(srv):
    c = th.InferenceServerClient(srv.http)
    answers = [_infer(c, "failing", 1.0) for _ in range(150)]
    errors = [i for i, (v, _) in enumerate(answers) if v == "error"]
    assert errors, "the canary got no traffic"
    assert all(v == "1" and y == 2.0 for v, y in answers[errors[-1] + 1:])  # stable only after the rollback
    assert len(answers) - errors[-1] > 50  # rolled back early: after ~10 canary requests, checked every 10
    assert _metric(srv, "tuili_canary_rollbacks_total", model="failing", version="2", reason="error_rate") == 1
    assert _metric(srv, "tuili_canary_weight", model="failing", version="2") == 0
    assert _metric(srv, "tuili_canary_errors_total", model="failing", version="2", role="canary") == len(errors)
    assert "canary version 2 rolled back: error rate" in srv.log()
    # a request naming a version bypasses the split, before and after the rollback
    assert _infer(c, "failing", 1.0, "2")[0] == "error"
    assert _infer(c, "failing", 1.0, "1") == ("1", 2.0)
    c.close()


def test_explicit_versions_bypass_the_split(srv):
    c = th.InferenceServerClient(srv.http)
    before = _metric(srv, "tuili_canary_requests_total", model="slowed")
    assert {_infer(c, "slowed", 0.0, "2") for _ in range(5)} == {("2", 2.0)}
    assert {_infer(c, "slowed", 0.0, "1") for _ in range(5)} == {("1", 1.0)}
    assert _metric(srv, "tuili_canary_requests_total", model="slowed") == before  # not routed, not compared
    c.close()


def test_a_slow_canary_is_rolled_back(srv):
    c = th.InferenceServerClient(srv.http)
    answers = [_infer(c, "slowed", 0.0) for _ in range(120)]
    assert {v for v, _ in answers} == {"1", "2"}
    assert _metric(srv, "tuili_canary_rollbacks_total", model="slowed", version="2", reason="latency") == 1
    assert "canary version 2 rolled back: p99" in srv.log()
    assert {_infer(c, "slowed", 0.0) for _ in range(10)} == {("1", 1.0)}
    c.close()


def test_shadow_copies_are_compared_and_never_answer(srv):
    c = th.InferenceServerClient(srv.http)
    assert {_infer(c, "shadowed", 3.0) for _ in range(20)} == {("1", 4.0)}  # the stable version answers all
    wait_for(lambda: _metric(srv, "tuili_canary_requests_total", model="shadowed", version="2", role="shadow") == 20)
    # version 2 adds 2, version 1 adds 1: every shadow answer differs
    wait_for(lambda: _metric(srv, "tuili_canary_shadow_mismatches_total", model="shadowed", version="2") == 20)
    assert _metric(srv, "tuili_canary_requests_total", model="shadowed", version="1", role="stable") == 20
    assert c.get_inference_statistics("shadowed", "2")["model_stats"][0]["inference_count"] == 20
    c.close()


def test_canary_parameters_are_refused_where_they_cannot_work(tmp_path):
    root = str(tmp_path)
    for v in (1, 2):
        _save(add_sub_model(), f"{root}/m/{v}/model.onnx")

    def config(name: str, extra: str) -> None:
        _write(f"{root}/{name}/config.pbtxt", f'name: "{name}" backend: "onnxruntime" max_batch_size: 8 {extra}')
        if name != "m":
            for v in (1, 2):
                _save(add_sub_model(), f"{root}/{name}/{v}/model.onnx")

    def params(**kw) -> str:
        return " ".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in kw.items())

    both = "version_policy: { all: { } } "
    config("m", params(canary_version="2", canary_weight="10"))  # only version 2 is loaded (latest 1)
    config("no_weight", both + params(canary_version="2"))
    config("bad_weight", both + params(canary_version="2", canary_weight="150"))
    config("no_version", both + params(canary_weight="10"))
    config("ok", both + params(canary_version="1", canary_weight="10", canary_shadow="true"))
    cases = {"m": "needs that version and a stable one loaded", "no_weight": "needs canary_weight",
             "bad_weight": "canary_weight is '150'", "no_version": "need canary_version"}

    async def main():
        core = InferenceServer(root, "explicit")
        await core.start()
        for name, message in cases.items():
            with pytest.raises(ConfigError, match=message):
                await core.load_model(name)
        await core.load_model("ok")  # version 1 the canary (shadowed), version 2 the stable one
        canary = core.models.canary("ok")
        assert canary.stable.version == "2" and canary.canary.version == "1" and canary.settings.shadow
        await core.stop()
    asyncio.run(main())
