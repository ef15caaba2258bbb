"""ONNX backend conformance through tuili.InferenceSession (native kernels only).

Every case must pass unless tests/conformance/skips.py lists it with a reason."""
from __future__ import annotations

import pytest

from tests.conformance.runner import all_cases, run_case
from tests.conformance.skips import SKIPS

CASES = all_cases()

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("case", CASES, ids=[f"{c.directory}/{c.name}" for c in CASES])
def test_case(case):
    status, detail = run_case(case)
    if status == "skip":
        pytest.skip(detail)
    assert status == "pass", detail


def test_skip_list_is_current():
    """A reasoned skip must name a real case; stale entries hide regressions."""
    names = {c.name for c in CASES}
    assert not set(SKIPS) - names, f"skips.py names unknown cases: {sorted(set(SKIPS) - names)}"
    assert all(reason.strip() for reason in SKIPS.values())


def test_node_pass_rate_goal():
    """The engine's goal: at least 90% of onnx's node cases run natively (skips count as not passing)."""
    node = [c for c in CASES if c.directory == "node"]
    skipped = sum(c.name in SKIPS for c in node)
    assert (len(node) - skipped) / len(node) >= 0.90, f"{skipped} of {len(node)} node cases are skipped"
