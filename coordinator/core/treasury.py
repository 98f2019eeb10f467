"""The core's money: wallets, task escrow, per-chunk payouts, fees, withdrawals.

Every movement is a ``Transfer`` applied to the in-memory ``Ledger`` and persisted in the
same group commit as the decision that caused it (a payout commits with its result), so
nothing is paid twice or lost, whatever instant the coordinator dies. A task reserves the
price of each chunk it has in flight; it is leased a new chunk only when its escrow still
covers one more, and within its spending rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator.core import effects as fx
from coordinator.core.events import Deposit, Withdraw, WithdrawalDecision
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
    pending,
    wallet,
)
from coordinator.core.state import Task

if TYPE_CHECKING:
    from coordinator.core.core import Core

MINUTE_MS = 60_000


@dataclass(slots=True)
class Withdrawal:
    id: int
    account_id: str
    amount: int
    state: str  # pending, approved, rejected (direct withdrawals are never pending)
    created_ms: int


class Treasury:
    def __init__(self, core: Core, fee_bps: int) -> None:
        self.core = core
        self.fee_bps = fee_bps
        self.ledger = Ledger()
        self.withdrawals: dict[int, Withdrawal] = {}
        # task -> per-second buckets [second, paid, chunks] of the last minute's payouts
        self._recent: dict[str, deque[list[int]]] = {}

    # ---- transfers --------------------------------------------------------------------

    def transfer(
        self, kind: str, entries: Sequence[tuple[str, int]], *, key: str | None = None,
        task_id: str | None = None, chunk: int | None = None, lease_id: int | None = None,
        memo: str = "",
    ) -> Transfer:
        """Apply and persist one balanced transfer; InsufficientFunds changes nothing."""
        core = self.core
        t = Transfer(core.new_id(), kind, tuple(entries), core.now, key, task_id, chunk, memo)
        self.ledger.apply(t)
        core.emit(fx.PersistTransfer(core.cause, t.id, kind, list(t.entries), t.at_ms, key,
                                     task_id, chunk, lease_id, memo))
        return t

    # ---- tasks ------------------------------------------------------------------------

    def reserved(self, task: Task) -> int:
        """The price of the chunks in flight and of results awaiting their verdict."""
        return (task.leased + task.votes_held) * task.price

    def available(self, task: Task) -> int:
        """What the task's escrow holds beyond the price of the chunks in flight."""
        return self.ledger.balance(escrow(task.id)) - self.reserved(task)

    def can_lease(self, task: Task, now: int) -> bool:
        if task.price == 0:
            return True
        if self.available(task) < task.price:
            return False
        if task.max_spend_per_minute:
            spent = self.spent_last_minute(task, now)
            return spent + self.reserved(task) + task.price <= task.max_spend_per_minute
        return True

    def needs(self, task: Task) -> int:
        """How much more escrow the task needs to finish (0 when it is covered)."""
        return max(0, (task.pending + task.leased + task.votes_held) * task.price
                   - self.ledger.balance(escrow(task.id)))

    def last_minute(self, task: Task, now: int) -> tuple[int, int]:
        """(credits paid, chunks accepted) by the task in the minute before ``now``."""
        recent = self._recent.get(task.id)
        if not recent:
            return 0, 0
        while recent and recent[0][0] <= (now - MINUTE_MS) // 1000:
            recent.popleft()
        return sum(b[1] for b in recent), sum(b[2] for b in recent)

    def spent_last_minute(self, task: Task, now: int) -> int:
        return self.last_minute(task, now)[0]

    def _count(self, task: Task, paid: int) -> None:
        recent = self._recent.setdefault(task.id, deque())
        second = self.core.now // 1000
        if recent and recent[-1][0] == second:
            recent[-1][1] += paid
            recent[-1][2] += 1
        else:
            recent.append([second, paid, 1])
            if len(recent) > 61:
                recent.popleft()

    def fund(self, task: Task, amount: int) -> None:
        self.transfer("fund", move(wallet(task.owner), escrow(task.id), amount),
                      task_id=task.id)

    def pay(self, task: Task, account_id: str, worker_id: str, chunk: int, lease_id: int) -> int:
        """Pay one accepted chunk out of escrow: the fee to the platform, the rest to the
        worker. Returns what the worker was credited."""
        self._count(task, task.price)
        if task.price == 0:
            return 0
        task.spent += task.price
        fee, share = fee_split(task.price, self.fee_bps)
        self.transfer(
            "payout",
            entries_of((escrow(task.id), -task.price), (PLATFORM, fee),
                       (wallet(account_id), share)),
            task_id=task.id, chunk=chunk, lease_id=lease_id, memo=f"worker {worker_id}",
        )
        return share

    def refund(self, task: Task) -> None:
        left = self.ledger.balance(escrow(task.id))
        if left > 0:
            self.transfer("refund", move(escrow(task.id), wallet(task.owner), left),
                          task_id=task.id, memo=f"task {task.state.label}")
        self._recent.pop(task.id, None)

    # ---- requests ---------------------------------------------------------------------

    def handle(self, ev: Deposit | Withdraw | WithdrawalDecision) -> None:
        """Money requests from outside; each answers its caller with a Reply."""
        core = self.core
        if isinstance(ev, Deposit | Withdraw) and (type(ev.amount) is not int or ev.amount <= 0):
            core.emit(fx.Reply(ev.eid, ok=False, status=400, error=(
                "the amount must be a whole number of credits above zero")))
            return
        match ev:
            case Deposit():
                if self.ledger.seen(ev.key):  # a re-delivered webhook: credited already
                    core.emit(fx.Reply(ev.eid, ok=True, status=200))
                    return
                self.deposit(ev.account_id, ev.amount, ev.key, ev.source)
                core.emit(fx.Reply(ev.eid, ok=True, status=201))
            case Withdraw():
                if ev.key is not None and self.ledger.seen(ev.key):
                    core.emit(fx.Reply(ev.eid, ok=False, status=409, error=(
                        "this withdrawal was already made (same idempotency key)")))
                    return
                try:
                    wid = self.withdraw(ev.account_id, ev.amount, ev.key, ev.direct)
                except InsufficientFunds as exc:
                    core.emit(fx.Reply(ev.eid, ok=False, status=402, error=(
                        f"your wallet holds {exc.balance}; you can withdraw at most that")))
                    return
                core.emit(fx.Reply(ev.eid, ok=True, status=201 if ev.direct else 202,
                                   value=wid))
            case WithdrawalDecision():
                if ev.withdrawal_id not in self.withdrawals:
                    core.emit(fx.Reply(ev.eid, ok=False, status=404, error=(
                        "no pending withdrawal with that id; list them with "
                        "`tn admin withdrawals list`")))
                    return
                self.decide(ev.withdrawal_id, ev.approve)
                core.emit(fx.Reply(ev.eid, ok=True, value=ev.withdrawal_id))

    # ---- wallets ----------------------------------------------------------------------

    def deposit(self, account_id: str, amount: int, key: str, source: str) -> None:
        self.transfer("deposit", move(WORLD, wallet(account_id), amount), key=key, memo=source)

    def withdraw(self, account_id: str, amount: int, key: str | None, direct: bool) -> int:
        """Direct: the money leaves at once. Otherwise it is held as a pending withdrawal
        until an admin approves or rejects it; returns the withdrawal id."""
        if direct:
            t = self.transfer("withdrawal", move(wallet(account_id), WORLD, amount), key=key)
            return t.id
        t = self.transfer("withdrawal_hold", move(wallet(account_id), pending(account_id),
                                                  amount), key=key)
        w = Withdrawal(t.id, account_id, amount, "pending", self.core.now)
        self.withdrawals[w.id] = w
        self._persist(w)
        return w.id

    def decide(self, withdrawal_id: int, approve: bool) -> Withdrawal:
        w = self.withdrawals.pop(withdrawal_id)
        w.state = "approved" if approve else "rejected"
        dest = WORLD if approve else wallet(w.account_id)
        kind = "withdrawal" if approve else "withdrawal_rejected"
        self.transfer(kind, move(pending(w.account_id), dest, w.amount),
                      memo=f"withdrawal {w.id}")
        self._persist(w)
        return w

    def _persist(self, w: Withdrawal) -> None:
        self.core.emit(fx.PersistWithdrawal(self.core.cause, w.id, w.account_id, w.amount,
                                            w.state, w.created_ms, self.core.now))


    def restore_spending(self, payouts: list[tuple[str, int, int]]) -> None:
        """Recent payouts (task, at_ms, amount), oldest first, so a spending cap per minute
        holds across a restart."""
        for task_id, at_ms, amount in payouts:
            recent = self._recent.setdefault(task_id, deque())
            second = at_ms // 1000
            if recent and recent[-1][0] == second:
                recent[-1][1] += amount
                recent[-1][2] += 1
            else:
                recent.append([second, amount, 1])
                if len(recent) > 61:
                    recent.popleft()

    def restore(self, balances: dict[str, int], keys: list[str], deposited: int,
                withdrawn: int, withdrawals: list[Withdrawal]) -> None:
        self.ledger.restore(balances, keys, deposited, withdrawn)
        self.withdrawals = {w.id: w for w in withdrawals if w.state == "pending"}


__all__ = ["InsufficientFunds", "Treasury", "Withdrawal"]
