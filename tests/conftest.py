"""Shared fixtures: zoo models exported once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# `make test` must not turn red on a new random example: the default profile replays the same
# examples every run. Explore with `pytest --hypothesis-profile=explore`.
settings.register_profile("repeatable", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def zoo_onnx(tmp_path_factory):
    """zoo_onnx(name) -> path of the model exported with a dynamic batch axis (cached for the session)."""
    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("zoo")

    def get(name: str) -> Path:
        if name not in cache:
            from tuili import zoo

            cache[name] = zoo.export(name, root / f"{name}.onnx")
        return cache[name]

    return get
