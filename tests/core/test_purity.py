"""The core is pure: no I/O, clock, randomness or adapter imports (STYLE.md, items 1 and 2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import coordinator.core

CORE_DIR = Path(coordinator.core.__file__).parent
FORBIDDEN = {
    "asyncio", "aiosqlite", "starlette", "uvicorn", "websockets", "asyncpg", "redis",
    "random", "uuid", "socket", "time", "datetime", "os", "threading",
}
MODULES = sorted(CORE_DIR.glob("*.py"))


def imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, as absolute dotted names (relative ones resolved)."""
    package = "coordinator.core"
    names: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append((node.lineno, module))
            # ``from coordinator import runtime`` imports a module, not just a package
            names += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.append((node.lineno, "__import__(...)"))
    return names


def violations(path: Path) -> list[str]:
    bad = []
    for line, name in imported_names(path):
        top = name.split(".")[0]
        outside_core = top == "coordinator" and not (
            name == "coordinator" or name.startswith("coordinator.core")
        )
        if name == "coordinator":
            continue  # the bare package; its submodules are checked through the alias names
        if top in FORBIDDEN or outside_core or name == "__import__(...)" or top == "importlib":
            bad.append(f"{path.name}:{line} imports {name}")
    return bad


def test_core_modules_found() -> None:
    names = {p.name for p in MODULES}
    assert {"core.py", "scheduling.py", "state.py", "events.py", "effects.py"} <= names
    assert "invariants.py" in names


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_core_module_is_pure(path: Path) -> None:
    assert violations(path) == []


def test_checker_catches_forbidden_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import time\nimport os.path\nfrom datetime import datetime\n"
        "from coordinator.runtime import Runtime\nfrom coordinator import sessions\n"
        "from .. import app\nfrom coordinator.core.state import Task\nimport msgspec\n"
    )
    assert violations(bad) == [
        "bad.py:1 imports time",
        "bad.py:2 imports os.path",
        "bad.py:3 imports datetime",
        "bad.py:3 imports datetime.datetime",
        "bad.py:4 imports coordinator.runtime",
        "bad.py:4 imports coordinator.runtime.Runtime",
        "bad.py:5 imports coordinator.sessions",
        "bad.py:6 imports coordinator.app",
    ]
