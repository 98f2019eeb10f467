"""The ledger on its own: balanced transfers, no overdraft, integers only, idempotent keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.ledger import (
    PLATFORM,
    WORLD,
    InsufficientFunds,
    Ledger,
    Transfer,
    entries_of,
    escrow,
    fee_split,
    move,
    wallet,
)


def t(i: int, kind: str, *entries: tuple[str, int], key: str | None = None) -> Transfer:
    return Transfer(i, kind, tuple(entries), at_ms=i, key=key)


def test_deposit_fund_payout_refund_balances_exactly() -> None:
    led = Ledger()
    led.apply(t(1, "deposit", *move(WORLD, wallet("c"), 1000), key="dep-1"))
    led.apply(t(2, "fund", *move(wallet("c"), escrow("t"), 600)))
    fee, share = fee_split(250, 1000)  # 10 %
    led.apply(t(3, "payout", (escrow("t"), -250), (PLATFORM, fee), (wallet("w"), share)))
    led.apply(t(4, "refund", *move(escrow("t"), wallet("c"), 350)))
    assert (led.balance(wallet("c")), led.balance(wallet("w")), led.balance(PLATFORM)) == (
        750, 225, 25)
    assert led.balance(escrow("t")) == 0
    led.check_invariants()


def test_overdraft_is_refused_and_changes_nothing() -> None:
    led = Ledger()
    led.apply(t(1, "deposit", *move(WORLD, wallet("c"), 100)))
    with pytest.raises(InsufficientFunds) as err:
        led.apply(t(2, "fund", *move(wallet("c"), escrow("t"), 101)))
    assert err.value.shortfall == 1
    assert "short by 1" in str(err.value)
    assert led.balance(wallet("c")) == 100 and led.balance(escrow("t")) == 0


def test_unbalanced_or_fractional_transfers_are_our_bug() -> None:
    led = Ledger()
    with pytest.raises(AssertionError, match="unbalanced"):
        led.apply(t(1, "x", (WORLD, -5), (wallet("c"), 4)))
    with pytest.raises(AssertionError, match="non-integer"):
        led.apply(t(2, "x", (WORLD, -1.5), (wallet("c"), 1.5)))  # type: ignore[arg-type]


def test_a_key_is_applied_once() -> None:
    led = Ledger()
    led.apply(t(1, "deposit", *move(WORLD, wallet("c"), 10), key="evt_1"))
    assert led.seen("evt_1")
    with pytest.raises(AssertionError, match="replayed"):
        led.apply(t(2, "deposit", *move(WORLD, wallet("c"), 10), key="evt_1"))


@given(st.integers(0, 10**12), st.integers(0, 10_000))
def test_fee_split_rounds_the_fee_down_and_loses_nothing(price: int, bps: int) -> None:
    fee, share = fee_split(price, bps)
    assert fee + share == price
    assert 0 <= fee <= price * bps / 10_000 < fee + 1


def test_zero_entries_are_dropped() -> None:
    assert entries_of(("a", -5), ("b", 0), ("c", 5)) == (("a", -5), ("c", 5))


ops = st.lists(st.tuples(
    st.sampled_from(["deposit", "withdraw", "fund", "pay", "refund"]),
    st.sampled_from(["c1", "c2"]), st.sampled_from(["t1", "t2"]), st.integers(1, 500)),
    max_size=80)


@settings(max_examples=200)
@given(ops)
def test_random_sequences_keep_every_invariant(seq: list[tuple[str, str, str, int]]) -> None:
    led = Ledger()
    for i, (op, cust, task, amount) in enumerate(seq):
        entries = {
            "deposit": move(WORLD, wallet(cust), amount),
            "withdraw": move(wallet(cust), WORLD, amount),
            "fund": move(wallet(cust), escrow(task), amount),
            "pay": ((escrow(task), -amount), (PLATFORM, amount // 10),
                    (wallet("w"), amount - amount // 10)),
            "refund": move(escrow(task), wallet(cust), amount),
        }[op]
        before = dict(led.balances)
        try:
            led.apply(t(i, op, *entries))
        except InsufficientFunds:
            assert led.balances == before  # a refusal changes nothing
        led.check_invariants()
