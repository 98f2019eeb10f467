"""Credits as people type and read them: ``12.34`` <-> 1234 units, exactly, never a float."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client import tn, tn_wallet
from client.render import format_credits, task_money_lines, task_summary
from client.tn_wallet import parse_credits
from schema.rest import MONEY_MAX


@given(st.integers(min_value=1, max_value=MONEY_MAX))
def test_format_then_parse_is_the_identity(units: int) -> None:
    text = format_credits(units)
    assert parse_credits(text) == units
    whole, dot, cents = text.partition(".")
    assert dot == "." and len(cents) == 2 and whole.isdigit()


@given(st.integers(min_value=1, max_value=10**13), st.sampled_from(["", ".0", ".00"]))
def test_whole_credits_are_a_hundred_units(credits: int, suffix: str) -> None:
    assert parse_credits(f"{credits}{suffix}") == credits * 100


@given(st.integers(min_value=1, max_value=MONEY_MAX))
def test_debits_show_with_a_minus(units: int) -> None:
    assert format_credits(-units) == "-" + format_credits(units)
    with pytest.raises(ValueError, match="more than 0"):
        parse_credits(format_credits(-units))


@pytest.mark.parametrize(("text", "units"), [
    ("12.34", 1234), ("12", 1200), ("0.01", 1), ("0.5", 50), ("007.10", 710), (" 3 ", 300),
    ("9999999999999.99", MONEY_MAX - 1), ("10000000000000", MONEY_MAX),
])
def test_parses_exactly(text: str, units: int) -> None:
    assert parse_credits(text) == units


@pytest.mark.parametrize(("text", "why"), [
    ("12.345", "more than two decimals"),
    ("0.001", "more than two decimals"),
    ("-5", "more than 0"),
    ("-0.01", "more than 0"),
    ("0", "more than 0"),
    ("0.00", "more than 0"),
    ("abc", "not an amount"),
    ("", "not an amount"),
    ("1e3", "not an amount"),
    ("1,5", "not an amount"),
    ("12.", "not an amount"),
    (".5", "not an amount"),
    ("nan", "not an amount"),
    ("inf", "not an amount"),
    ("1_000", "not an amount"),
    ("10000000000000.01", "over the largest amount"),
    ("9" * 5000, "over the largest amount"),  # never reaches int() (its digit limit)
])
def test_refuses_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_credits(text)


def test_format_credits() -> None:
    assert [format_credits(n) for n in (0, 1, 99, 100, 1234, -5, -1234)] == [
        "0.00", "0.01", "0.99", "1.00", "12.34", "-0.05", "-12.34"]


@pytest.mark.parametrize("argv", [
    ["wallet", "deposit", "12.345"], ["wallet", "withdraw", "0"], ["wallet", "deposit", "x"],
    ["wallet", "deposit", "--", "-3"], ["task", "fund", "t1", "1.001"],
    ["task", "submit", "--code", "a.py", "--data", "d.json", "--price", "0.001"],
    ["task", "submit", "--code", "a.py", "--data", "d.json", "--budget", "-1"],
])
def test_cli_refuses_bad_amounts_before_any_request(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert tn.main(["--url", "http://127.0.0.1:9", *argv]) == 2
    err = capsys.readouterr().err
    assert "AMOUNT" in err or "CREDITS" in err, err


def test_submit_options_become_integer_units() -> None:
    args = tn.build_parser().parse_args([
        "task", "submit", "--code", "a.py", "--data", "d.json", "--budget", "12.50",
        "--price", "0.05", "--max-spend-per-minute", "1"])
    assert tn_wallet.money_spec(args) == {
        "budget": 1250, "price_per_chunk": 5, "max_spend_per_minute": 100}
    spec = tn.spec_from_args(args)
    assert spec["budget"] == 1250 and type(spec["budget"]) is int
    free = tn.build_parser().parse_args(["task", "submit", "--code", "a", "--data", "d"])
    assert tn_wallet.money_spec(free) == {}
    assert tn_wallet.money_spec(argparse.Namespace()) == {}


def test_task_status_shows_money() -> None:
    task = {"id": "t1", "state": "running", "price_per_chunk": 105, "budget": 1000,
            "spent": 315, "reserved": 210, "remaining": 475, "burn_per_minute": 315,
            "chunks_per_minute": 3, "eta_ms": 90_000, "cost_to_finish": 735,
            "needs_funds": True, "funds_needed": 260, "max_spend_per_minute": 0}
    lines = dict(task_money_lines(task))
    assert lines["price"] == "1.05 per chunk · budget 10.00"
    assert lines["money"] == "spent 3.15 · reserved 2.10 · remaining 4.75"
    assert lines["pace"] == "3.15/min · 3 chunks/min · ETA 1m30s · 7.35 to finish"
    assert "2.60 more" in lines["funds"] and "tn task fund t1 2.60" in lines["funds"]
    assert "state    needs funds" in task_summary(task)
    assert task_money_lines({"price_per_chunk": 0, "budget": 0}) == []
