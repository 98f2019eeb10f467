"""Capability matching: what workers declare against what tasks require."""

from __future__ import annotations

import pytest

from coordinator.core.capabilities import (
    RequirementError,
    parse_capabilities,
    parse_requirement,
    satisfies,
    unmet,
    validate_requirements,
)

WORKER = parse_capabilities(["python=3.11", "mem_gb=16", "gpu", "name=alpha", "os=linux"])


def test_parse_capabilities() -> None:
    assert WORKER == {
        "python": "3.11", "mem_gb": "16", "gpu": "1", "name": "alpha", "os": "linux",
    }
    assert parse_capabilities([" cuda = 12.2 "]) == {"cuda": "12.2"}
    assert parse_capabilities([]) == {}


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("python=3.11", True),
        ("python==3.11", True),
        ("python=3.10", False),
        ("python!=3.10", True),
        ("python>=3.10", True),  # 3.10 < 3.11 as versions, not 3.1 as a number
        ("python>3.9", True),
        ("python<=3.11", True),
        ("python<3.11", False),
        ("python>=3.12", False),
        ("mem_gb>=8", True),
        ("mem_gb>=16", True),
        ("mem_gb>16", False),
        ("mem_gb<32", True),
        ("mem_gb>=9", True),  # numbers compare as numbers ("16" < "9" as text)
        ("mem_gb>=32", False),
        ("gpu", True),
        ("gpu=1", True),
        ("tpu", False),  # not declared
        ("tpu!=x", False),  # a requirement names a capability the worker must declare
        ("name!=x", True),
        ("name!=alpha", False),
        ("name=alpha", True),
        ("name>=aardvark", False),  # text has no order
        ("os=linux", True),
        ("os=windows", False),
        ("os>=8", False),  # text against a number never satisfies an ordering
        (" python >= 3.10 ", True),
    ],
)
def test_satisfies(requirement: str, expected: bool) -> None:
    assert satisfies(WORKER, requirement) is expected


@pytest.mark.parametrize(
    ("have", "want", "op"),
    [("3.9", "3.10", "<"), ("3.10", "3.9", ">"), ("1.2.10", "1.2.9", ">"), ("2.0", "10.0", "<")],
)
def test_versions_order_numerically_by_part(have: str, want: str, op: str) -> None:
    assert satisfies({"v": have}, f"v{op}{want}")
    assert not satisfies({"v": have}, f"v{'>=' if op == '<' else '<='}{want}")


def test_unmet_lists_what_is_missing() -> None:
    reqs = ["gpu", "mem_gb>=32", "python>=3.10", "tpu"]
    assert unmet(WORKER, reqs) == ["mem_gb>=32", "tpu"]
    assert unmet(WORKER, []) == []


def test_parse_requirement() -> None:
    assert parse_requirement("gpu") == ("gpu", None, "")
    assert parse_requirement("python==3.11") == ("python", "=", "3.11")
    assert parse_requirement("mem_gb >= 8") == ("mem_gb", ">=", "8")
    assert parse_requirement("a.b-c_d!=x") == ("a.b-c_d", "!=", "x")


@pytest.mark.parametrize(
    "bad", ["", "   ", ">=3", "=x", "mem_gb>=", "python=", "gpu!=", "mem_gb<", "  <= 2"],
)
def test_malformed_requirements_raise(bad: str) -> None:
    with pytest.raises(RequirementError):
        parse_requirement(bad)
    with pytest.raises(RequirementError):
        validate_requirements(["gpu", bad])
    with pytest.raises(RequirementError):
        satisfies(WORKER, bad)


@pytest.mark.parametrize("bad", ["gpu 2", "python 3.11", "mem_gb 8", "gpu!"])
def test_requirement_with_trailing_text_and_no_operator_raises(bad: str) -> None:
    """Regression: 'python 3.11' was read as 'python' and matched any python."""
    with pytest.raises(RequirementError):
        parse_requirement(bad)


@pytest.mark.parametrize("bad", ["", "=x", "has space", "has space=1", "a/b", "é", " =1"])
def test_malformed_capabilities_raise(bad: str) -> None:
    with pytest.raises(RequirementError):
        parse_capabilities(["gpu", bad])


@pytest.mark.parametrize(
    ("have", "requirement"),
    [("15.5", "mem_gb>=8"), ("3.11", "mem_gb>=3"), ("8", "mem_gb>=7.5"), ("16", "mem_gb=16.0")],
)
def test_decimal_and_integer_values_compare(have: str, requirement: str) -> None:
    """Regression: a dotted value and a plain number never compared (15.5 >= 8 was False)."""
    assert satisfies({"mem_gb": have}, requirement)


@pytest.mark.parametrize(
    ("have", "requirement", "expected"),
    [
        ("3.10", "v>3.9", True),  # both dotted: versions, not 3.1 < 3.9
        ("1.2.10", "v>=1.2.9", True),
        ("1.2.10", "v>=8", False),  # a three-part version is no number: no order
        ("16", "v!=16.0", False),  # numbers: 16 == 16.0
        ("linux", "v!=16", True),
        ("abc", "v<abd", False),  # text has equality only, no order
    ],
)
def test_mixed_values(have: str, requirement: str, expected: bool) -> None:
    assert satisfies({"v": have}, requirement) is expected


@pytest.mark.parametrize("raw", ["mem_gb>>8", "gpu=>1", "python==>3"])
def test_doubled_operators_are_refused(raw: str) -> None:
    with pytest.raises(RequirementError):
        parse_requirement(raw)
