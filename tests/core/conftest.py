"""The ``core`` fixture: a fresh core with the test configuration of ``core_steps``."""

from __future__ import annotations

import pytest

from coordinator.core.core import Core
from tests.core.core_steps import CFG


@pytest.fixture
def core() -> Core:
    return Core(CFG, epoch=1)
