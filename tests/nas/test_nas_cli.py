"""`tuili nas`: bad options fail before anything is measured, with a clear message."""
from __future__ import annotations

import pytest

from tuili.cli import main
from tuili.errors import ConfigError
from tuili.nas.pipeline import NasConfig


@pytest.mark.parametrize("args,match", [
    (["--budget-ms", "0"], "budget-ms must be > 0"),
    (["--budget-ms", "-2"], "budget-ms must be > 0"),
    (["--budget-ms", "2", "--engine", "tensorrt"], "unknown engine 'tensorrt'"),
    (["--budget-ms", "2", "--batch", "0"], "batch must be a positive integer"),
    (["--budget-ms", "2", "--strategy", "annealing"], "unknown strategy"),
    ([], "give a latency budget"),
])
def test_bad_options_exit_2_naming_the_problem(tmp_path, capsys, args, match):
    assert main(["nas", *args, "-o", str(tmp_path / "x.onnx"), "--no-progress"]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x_nas").exists()


def test_config_checks_raise_config_errors():
    with pytest.raises(ConfigError):
        NasConfig(budget_ms=1.0, engine="openvino").check()
    NasConfig(budget_ms=None, pareto=True).check()
    assert NasConfig.quick(budget_ms=1.0).evaluations < NasConfig(budget_ms=1.0).evaluations
