"""A tiny search space: blocks and networks that build, export and time in milliseconds."""
from __future__ import annotations

import pytest

from tuili.nas.space import SearchSpace, StageSpec


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return SearchSpace(resolution=16, in_channels=1, num_classes=5, stem=8, head=32,
                       stages=(StageSpec(8, 2), StageSpec(16, 2)), kernels=(3, 5), expansions=(3, 6), depths=(1, 2),
                       widths=(0.5, 1.0))


@pytest.fixture(scope="session")
def micro_space() -> SearchSpace:
    """Six blocks in all: for tests that measure a whole latency table."""
    return SearchSpace(resolution=8, in_channels=1, num_classes=3, stem=8, head=16, stages=(StageSpec(8, 1),),
                       kernels=(3,), expansions=(3,), depths=(1, 2), widths=(1.0,))
