"""Asserts in tests/sim/market.py get pytest's explanations, as when it was a test module."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.sim.market")
