"""Capability matching: workers declare ``name`` or ``name=value``; tasks require
``name``, ``name=value``, ``name!=value``, ``name>=value``, ``name<=value``, ``name>value``
or ``name<value``. Dotted numbers compare as versions (3.9 < 3.10), other numbers as
numbers; other values only match with ``=`` and ``!=``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:(>=|<=|!=|==|=|>|<)\s*(.*?))?\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

class RequirementError(ValueError):
    pass


def parse_capabilities(declared: Iterable[str]) -> dict[str, str]:
    caps: dict[str, str] = {}
    for raw in declared:
        name, _, value = raw.partition("=")
        name = name.strip()
        if not _NAME.match(name):
            raise RequirementError(
                f"capability {raw!r} is not of the form name or name=value "
                "(letters, digits, '_', '.', '-')"
            )
        caps[name] = value.strip() if value else "1"
    return caps


def parse_requirement(raw: str) -> tuple[str, str | None, str]:
    m = _REQ.match(raw)
    if m is None or (m.group(2) is not None and (m.group(3) == "" or m.group(3)[0] in "<>=!")):
        raise RequirementError(
            f"requirement {raw!r} is not of the form name, name=value or name>=value"
        )
    op = m.group(2)
    return m.group(1), ("=" if op == "==" else op), m.group(3) or ""


def validate_requirements(reqs: Iterable[str]) -> None:
    for r in reqs:
        parse_requirement(r)


_VERSION = re.compile(r"\d+(\.\d+)+")


def _key(a: str, b: str) -> tuple[float | tuple[int, ...] | str, float | tuple[int, ...] | str]:
    """Comparable forms of two values: versions when both are dotted numbers (3.9 < 3.10),
    numbers when both are numbers (15.5 >= 8), else text."""
    if _VERSION.fullmatch(a) and _VERSION.fullmatch(b):
        return tuple(int(p) for p in a.split(".")), tuple(int(p) for p in b.split("."))
    try:
        return float(a), float(b)
    except ValueError:
        return a, b


def satisfies(caps: dict[str, str], requirement: str) -> bool:
    name, op, want = parse_requirement(requirement)
    have = caps.get(name)
    if have is None:
        return False
    if op is None:
        return True
    a, b = _key(have, want)
    if op in ("=", "!="):
        return (a == b) == (op == "=")
    if type(a) is not type(b) or isinstance(a, str):
        return False  # order needs numbers or versions on both sides
    if op == ">=":
        return a >= b  # type: ignore[operator]
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    return a < b  # type: ignore[operator]


def unmet(caps: dict[str, str], requirements: Iterable[str]) -> list[str]:
    return [r for r in requirements if not satisfies(caps, r)]
