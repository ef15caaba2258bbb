"""resolve_inside: a path a config names must stay inside the model directory, symlinks resolved."""
from __future__ import annotations

import os

import pytest

from tuili.model_config import ModelConfigError
from tuili.model_config.paths import resolve_inside


def test_resolve_inside(tmp_path):
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    os.symlink(tmp_path / "secret.txt", model / "out.txt")
    os.symlink("1", model / "v")
    real = os.path.realpath(model)
    assert resolve_inside(model, "labels.txt") == os.path.join(real, "labels.txt")  # need not exist
    assert resolve_inside(model, "../1/x", relative_to=model / "1") == os.path.join(real, "1", "x")
    assert resolve_inside(model, "v/x") == os.path.join(real, "1", "x")  # a symlink that stays inside
    for name in ("/etc/passwd", "../secret.txt", "out.txt", "1/../../secret.txt"):
        with pytest.raises(ModelConfigError) as e:
            resolve_inside(model, name, field="output[0].label_filename", source="cfg")
        assert e.value.field == "output[0].label_filename" and repr(name) in str(e.value)
        assert "outside the model directory" in str(e.value) and "--allow-paths-outside-repository" in str(e.value)
        assert resolve_inside(model, name, allow_outside=True) == os.path.realpath(os.path.join(model, name))
    # a sibling whose name starts like the model directory is outside too
    (tmp_path / "m2").mkdir()
    with pytest.raises(ModelConfigError):
        resolve_inside(model, "../m2/x")
