"""Capability matching: workers declare ``name`` or ``name=value``; tasks require
``name``, ``name=value``, ``name!=value``, ``name>=value``, ``name<=value``, ``name>value``
or ``name<value``. Dotted numbers compare as versions (3.9 < 3.10), other numbers as
numbers, the rest as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=|!=|==|=|>|<)?\s*(.*?)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

Key = tuple[int, float | tuple[int, ...] | str]


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
    if m is None or (m.group(2) is not None and m.group(3) == ""):
        raise RequirementError(
            f"requirement {raw!r} is not of the form name, name=value or name>=value"
        )
    op = m.group(2)
    return m.group(1), ("=" if op == "==" else op), m.group(3)


def validate_requirements(reqs: Iterable[str]) -> None:
    for r in reqs:
        parse_requirement(r)


def _key(value: str) -> Key:
    # dotted numbers are versions (python=3.9 < 3.10); other numbers compare as numbers
    if re.fullmatch(r"\d+(\.\d+)+", value):
        return (1, tuple(int(p) for p in value.split(".")))
    try:
        return (0, float(value))
    except ValueError:
        return (2, value)


def satisfies(caps: dict[str, str], requirement: str) -> bool:
    name, op, want = parse_requirement(requirement)
    have = caps.get(name)
    if have is None:
        return False
    if op is None:
        return True
    a, b = _key(have), _key(want)
    if op in ("=", "!="):
        equal = a == b if a[0] == b[0] else have == want
        return equal if op == "=" else not equal
    if a[0] != b[0]:
        return False
    if op == ">=":
        return a[1] >= b[1]  # type: ignore[operator]
    if op == "<=":
        return a[1] <= b[1]  # type: ignore[operator]
    if op == ">":
        return a[1] > b[1]  # type: ignore[operator]
    return a[1] < b[1]  # type: ignore[operator]


def unmet(caps: dict[str, str], requirements: Iterable[str]) -> list[str]:
    return [r for r in requirements if not satisfies(caps, r)]
