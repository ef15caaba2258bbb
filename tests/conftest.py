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


# Tiers, by what a test needs: `make test-fast` runs none of these (the inner loop, under 30 s).
_TIER_OF_DIR = {"serve": "serve", "zoo": "zoo", "conformance": "conformance"}


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).parent
    for item in items:
        parts = Path(str(item.fspath)).relative_to(tests_dir).parts
        tier = _TIER_OF_DIR.get(parts[0]) if len(parts) > 1 else None
        if tier:
            item.add_marker(tier)
        if "zoo_onnx" in getattr(item, "fixturenames", ()) or "zoo" in Path(str(item.fspath)).stem:
            item.add_marker("zoo")
