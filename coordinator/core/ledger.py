"""Money: balanced double-entry transfers between named accounts, in integer credits.

Accounts: ``wallet:<account>`` (customers and workers alike), ``escrow:<task>``,
``pending:<account>`` (withdrawals awaiting an admin), ``platform`` (fees) and ``world``
(the outside: deposits come from it, withdrawals go to it, so its balance is minus what the
platform holds for others). Every transfer's entries sum to zero; no account but ``world``
ever goes below zero; amounts are ``int`` and nothing else. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

WORLD = "world"
PLATFORM = "platform"
BPS = 10_000  # fees are in basis points: 250 = 2.5 %


def wallet(account_id: str) -> str:
    return f"wallet:{account_id}"


def escrow(task_id: str) -> str:
    return f"escrow:{task_id}"


def pending(account_id: str) -> str:
    return f"pending:{account_id}"


class InsufficientFunds(ValueError):
    """A transfer would take an account below zero: the peer's mistake, not ours."""

    def __init__(self, account: str, balance: int, needed: int) -> None:
        super().__init__(
            f"{account} holds {balance} but {needed} is needed (short by {needed - balance})"
        )
        self.account = account
        self.balance = balance
        self.needed = needed

    @property
    def shortfall(self) -> int:
        return self.needed - self.balance


@dataclass(frozen=True, slots=True)
class Transfer:
    """One balanced transaction. ``key`` makes outside requests idempotent (a Stripe event
    id, a client's idempotency key); internal transfers need none, since the core never
    makes the same decision twice."""

    id: int
    kind: str  # deposit, withdrawal, fund, refund, payout, ...
    entries: tuple[tuple[str, int], ...]
    at_ms: int
    key: str | None = None
    task_id: str | None = None
    chunk: int | None = None
    memo: str = ""


def fee_split(price: int, fee_bps: int) -> tuple[int, int]:
    """(platform fee rounded down, the worker's share) of one chunk's price."""
    fee = price * fee_bps // BPS
    return fee, price - fee


@dataclass
class Ledger:
    balances: dict[str, int] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    deposited: int = 0  # from the world, ever
    withdrawn: int = 0  # to the world, ever

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def seen(self, key: str) -> bool:
        return key in self.keys

    def check(self, entries: Iterable[tuple[str, int]]) -> None:
        """Raise InsufficientFunds if applying ``entries`` would overdraw an account."""
        change: dict[str, int] = {}
        for account, amount in entries:
            change[account] = change.get(account, 0) + amount
        for account, delta in change.items():
            if account != WORLD and self.balance(account) + delta < 0:
                raise InsufficientFunds(account, self.balance(account), -delta)

    def apply(self, transfer: Transfer) -> None:
        entries = transfer.entries
        assert entries, "a transfer needs entries"
        assert all(type(a) is int for _, a in entries), f"non-integer money in {transfer}"
        assert sum(a for _, a in entries) == 0, f"unbalanced transfer {transfer}"
        assert transfer.key is None or transfer.key not in self.keys, f"replayed {transfer}"
        self.check(entries)
        for account, amount in entries:
            self.balances[account] = self.balance(account) + amount
            if account == WORLD:
                if amount < 0:
                    self.deposited -= amount
                else:
                    self.withdrawn += amount
        if transfer.key is not None:
            self.keys.add(transfer.key)

    def restore(self, balances: dict[str, int], keys: Iterable[str], deposited: int,
                withdrawn: int) -> None:
        self.balances = dict(balances)
        self.keys = set(keys)
        self.deposited, self.withdrawn = deposited, withdrawn

    def check_invariants(self) -> None:
        total = sum(self.balances.values())
        assert total == 0, f"ledger does not balance: accounts sum to {total}"
        for account, amount in self.balances.items():
            assert type(amount) is int, f"{account} holds a non-integer {amount!r}"
            assert account == WORLD or amount >= 0, f"{account} is negative: {amount}"
        held = total - self.balance(WORLD)
        assert held == self.deposited - self.withdrawn, (
            f"accounts hold {held} but deposits minus withdrawals is "
            f"{self.deposited - self.withdrawn}"
        )


def entries_of(*pairs: tuple[str, int]) -> tuple[tuple[str, int], ...]:
    """Drop zero entries (a 0 % fee) so a transfer lists only what moved."""
    return tuple(p for p in pairs if p[1] != 0)


def move(source: str, dest: str, amount: int) -> Sequence[tuple[str, int]]:
    return ((source, -amount), (dest, amount))
