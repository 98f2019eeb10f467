"""The rules for what customers and the admin ask: money requests and tasks, as a mixin."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import (
    Deposit,
    TaskCancel,
    TaskFund,
    TaskPause,
    TaskResume,
    TaskSubmitted,
    TaskUpdate,
    Withdraw,
    WithdrawalDecision,
)
from coordinator.core.ledger import WORLD, escrow, wallet
from coordinator.core.lifecycle import TERMINAL_TASK_STATES
from tests.core.money_model import ACCOUNTS, CUSTOMERS, PICK, VERIFY, Build, of_type


class RequestRules:
    """The @rule methods of MoneyMachine for deposits, withdrawals and tasks; it sets the
    state they use and handles their turns."""

    core: Core
    eid: int
    specs: dict[str, tuple[int, int]]
    deposit_keys: list[str]
    withdraw_keys: list[str]
    asked_deposits: dict[str, set[tuple[str, int]]]
    withdrawal_ids: list[int]
    requests: dict[int, tuple[str, str, int]]
    dead: set[int]
    _settle: Callable[[], None]
    _turn: Callable[[Build], list[fx.Effect]]

    # ---- money requests ----------------------------------------------------------------

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 3000),
          again=st.integers(0, 3))
    def deposit(self, account: str, amount: int, again: int) -> None:
        if again == 0 and self.deposit_keys:  # a re-delivered webhook, or a reused key
            key = self.deposit_keys[amount % len(self.deposit_keys)]
        else:
            key = f"dep-{len(self.deposit_keys)}"
        self._deposit(account, amount, key)

    def _deposit(self, account: str, amount: int, key: str) -> None:
        if key not in self.asked_deposits:
            self.deposit_keys.append(key)
        self._settle()
        seen = self.core.treasury.ledger.seen(key)
        self.asked_deposits.setdefault(key, set()).add((account, amount))
        effects = self._turn(lambda eid, at: Deposit(eid, at, account, amount, key, "sandbox"))
        [reply] = of_type(effects, fx.Reply)
        moved = [(t.kind, t.entries) for t in of_type(effects, fx.PersistTransfer)]
        if seen:
            assert (reply.ok, reply.status, moved) == (True, 200, [])
        else:
            assert (reply.ok, reply.status) == (True, 201)
            assert moved == [("deposit", [(WORLD, -amount), (wallet(account), amount)])]
        self.requests[self.eid] = ("deposit", key, amount)

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 4000), direct=st.booleans(),
          keyed=st.sampled_from(["none", "new", "again"]))
    def withdraw(self, account: str, amount: int, direct: bool, keyed: str) -> None:
        key: str | None = None
        if keyed == "again" and self.withdraw_keys:
            key = self.withdraw_keys[amount % len(self.withdraw_keys)]
        elif keyed != "none":
            key = f"wd-{len(self.withdraw_keys)}"
            self.withdraw_keys.append(key)
        self._settle()
        ledger = self.core.treasury.ledger
        have, seen = ledger.balance(wallet(account)), key is not None and ledger.seen(key)
        effects = self._turn(lambda eid, at: Withdraw(eid, at, account, amount, direct, key))
        [reply] = of_type(effects, fx.Reply)
        moved = of_type(effects, fx.PersistTransfer)
        if seen or amount > have:
            assert (reply.ok, reply.status, moved) == (False, 409 if seen else 402, [])
            return
        assert (reply.ok, reply.status) == (True, 201 if direct else 202)
        assert [t.id for t in moved] == [reply.value]
        assert ledger.balance(wallet(account)) == have - amount
        if not direct:
            self.withdrawal_ids.append(reply.value)
        self.requests[self.eid] = ("withdraw", account, reply.value)

    @precondition(lambda self: self.withdrawal_ids)
    @rule(pick=PICK, approve=st.booleans())
    def decide_withdrawal(self, pick: int, approve: bool) -> None:
        ids = [*self.withdrawal_ids, 12345]  # and one that never existed
        wid = ids[pick % len(ids)]
        self._settle()
        pending = self.core.treasury.withdrawals.get(wid)
        effects = self._turn(lambda eid, at: WithdrawalDecision(eid, at, wid, approve))
        [reply] = of_type(effects, fx.Reply)
        moved = [(t.kind, t.entries) for t in of_type(effects, fx.PersistTransfer)]
        if pending is None:
            assert (reply.ok, reply.status, moved) == (False, 404, [])
            return
        dest = WORLD if approve else wallet(pending.account_id)
        kind = "withdrawal" if approve else "withdrawal_rejected"
        assert reply.ok and moved == [
            (kind, [(f"pending:{pending.account_id}", -pending.amount), (dest, pending.amount)])
        ]
        self.requests[self.eid] = ("decide", "approved" if approve else "rejected", wid)

    # ---- tasks --------------------------------------------------------------------------

    @rule(owner=st.sampled_from(CUSTOMERS), chunks=st.integers(0, 6),
          chunk_size=st.integers(1, 3), last=st.integers(1, 3),
          price=st.sampled_from([0, 1, 7, 100, 250]),
          budget=st.integers(0, 1500) | st.sampled_from(["wallet", "wallet+1"]),
          concurrency=st.integers(1, 4), attempts=st.integers(1, 3),
          timeout=st.sampled_from([1000, 5000, 60_000]),
          cap=st.sampled_from([0, 0, 250, 1000]), again=st.integers(0, 9),
          verify=st.sampled_from(["none", "none", "spot", "spot all", "2 of 2", "2 of 3"]))
    def submit(self, owner: str, chunks: int, chunk_size: int, last: int, price: int,
               budget: int | str, concurrency: int, attempts: int, timeout: int, cap: int,
               again: int, verify: str) -> None:
        self._submit(owner, chunks, chunk_size, last, price, budget, concurrency, attempts,
                     timeout, cap, again, verify)

    def _submit(self, owner: str, chunks: int, chunk_size: int, last: int, price: int,
                budget: int | str, concurrency: int, attempts: int, timeout: int, cap: int,
                again: int, verify: str) -> None:
        self._settle()
        have = self.core.treasury.ledger.balance(wallet(owner))
        amount = budget if isinstance(budget, int) else have + (budget == "wallet+1")
        items = (chunks - 1) * chunk_size + min(last, chunk_size) if chunks else 0
        ids = list(self.specs)
        task_id = ids[(chunks + last) % len(ids)] if again == 0 and ids else f"t{len(ids)}"
        exists = task_id in self.core.tasks
        mode, k, m, spot = VERIFY[verify]
        effects = self._turn(lambda eid, at: TaskSubmitted(
            eid, at, task_id, owner, "", chunks, items, chunk_size, concurrency, attempts,
            timeout, [], "code", price, amount, cap, verification=mode, quorum_k=k,
            quorum_m=m, spot_per_mille=spot, salt=f"salt of {task_id}",
        ))
        [reply] = of_type(effects, fx.Reply)
        if exists or amount > have:
            assert (reply.ok, reply.status) == (False, 409 if exists else 402)
            assert not [e for e in effects if isinstance(e, fx.PERSISTENT)]
            return
        assert reply.ok and task_id in self.core.tasks
        funded = [t for t in of_type(effects, fx.PersistTransfer) if t.kind == "fund"]
        assert [t.entries for t in funded] == ([[(wallet(owner), -amount),
                                                 (escrow(task_id), amount)]] if amount else [])
        self.specs[task_id] = (items, chunk_size)
        self.requests[self.eid] = ("task", task_id, amount)

    @precondition(lambda self: self.specs)
    @rule(pick=PICK, action=st.sampled_from(["fund", "fund", "cancel", "pause", "resume", "cap"]),
          amount=st.integers(1, 1500), unknown=st.integers(0, 9))
    def steer(self, pick: int, action: str, amount: int, unknown: int) -> None:
        """The owner tops a task up, cancels, pauses or resumes it, or changes its cap and
        priority (or names no task)."""
        ids = list(self.specs)
        task_id = ids[pick % len(ids)] if unknown else "t-none"
        self._settle()
        task = self.core.tasks.get(task_id)
        refused = 404 if task is None else 409 if task.state in TERMINAL_TASK_STATES else 0
        ledger = self.core.treasury.ledger
        left = ledger.balance(escrow(task_id))
        have = ledger.balance(wallet(task.owner)) if task else 0
        leases = set(task.lease_of_chunk.values()) if task else set()
        build: Build = {
            "fund": lambda eid, at: TaskFund(eid, at, task_id, amount),
            "cancel": lambda eid, at: TaskCancel(eid, at, task_id),
            "pause": lambda eid, at: TaskPause(eid, at, task_id),
            "resume": lambda eid, at: TaskResume(eid, at, task_id),
            "cap": lambda eid, at: TaskUpdate(eid, at, task_id, 1 + amount % 4, 1 + amount % 10),
        }[action]
        effects = self._turn(build)
        [reply] = of_type(effects, fx.Reply)
        moved = [(t.kind, t.entries) for t in of_type(effects, fx.PersistTransfer)]
        if action == "fund" and not refused and amount > have:
            refused = 402
        if refused:
            assert (reply.ok, reply.status, moved) == (False, refused, [])
            return
        assert task is not None and reply.ok
        if action == "fund":
            assert moved == [("fund", [(wallet(task.owner), -amount),
                                       (escrow(task_id), amount)])]
            assert ledger.balance(escrow(task_id)) == left + amount
            self.requests[self.eid] = ("fund", task_id, amount)
        elif action == "cancel":
            assert leases <= self.dead, "a cancelled task's leases live on"
            assert moved == ([("refund", [(escrow(task_id), -left),
                                          (wallet(task.owner), left)])] if left else [])
            self.requests[self.eid] = ("cancel", task_id, 0)
        else:
            assert moved == [], f"{action} moved money"
            assert action != "pause" or leases <= self.dead, "a paused task's leases live on"
