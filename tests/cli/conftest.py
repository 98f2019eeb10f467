"""Fixtures of the ``tn`` tests: input files, and an environment without TN_* settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    code = tmp_path / "main.py"
    code.write_text("def process(item):\n    return item * 2\n")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(list(range(100))))
    return code, data


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TN_URL", "API_BASE", "TN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
