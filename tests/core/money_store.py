"""An in-memory stand-in for ``coordinator/store/sqlite.py``, for property tests of the money.

It keeps the rows the real store keeps (tasks and their settings, results, votes awaiting
verification, failures, transfers with their entries and the balances they add up to,
withdrawals) and enforces the same constraints: a chunk's result once, a lease's payout
once, an idempotency key once, no balance but the world's below zero after any entry, in
commit order. A commit is all or nothing: rows go to copies, swapped in when all held.

``restore`` hands a freshly booted ``Core`` what ``coordinator/app.py``'s lifespan hands
it: ``restore_task`` for every task, oldest first, with its votes loaded onto it (as
``load_tasks`` does), then ``restore_accepted``, then ``restore_money``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.ledger import WORLD
from coordinator.core.lifecycle import TaskState
from coordinator.core.state import Task, Vote, worker_key
from coordinator.core.treasury import Withdrawal


class ConstraintError(AssertionError):
    """The real store would refuse this commit (and the coordinator would stop)."""


@dataclass
class MoneyStore:
    tasks: dict[str, fx.PersistTask] = field(default_factory=dict)
    states: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    results: dict[tuple[str, int], fx.PersistResult] = field(default_factory=dict)
    result_of_lease: dict[int, fx.PersistResult] = field(default_factory=dict)
    failures: list[fx.PersistFailure] = field(default_factory=list)
    transfers: dict[int, fx.PersistTransfer] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)  # idempotency key -> transfer id
    payout_of_lease: dict[int, int] = field(default_factory=dict)  # lease -> transfer id
    balances: dict[str, int] = field(default_factory=dict)
    withdrawals: dict[int, fx.PersistWithdrawal] = field(default_factory=dict)
    settings: dict[str, tuple[int, int]] = field(default_factory=dict)  # cap, priority
    votes: dict[int, fx.PersistVote] = field(default_factory=dict)  # lease -> awaiting verdict
    # every vote, cleared ones too, and the acks of fx.PersistAck
    votes_ever: dict[int, fx.PersistVote | fx.PersistAck] = field(default_factory=dict)
    commits: int = 0

    # ---- one group commit -------------------------------------------------------------

    def commit(self, effects: Iterable[fx.Effect]) -> None:
        """Apply one group commit's persistence effects, in order, atomically."""
        batch = [e for e in effects if isinstance(e, fx.PERSISTENT)]
        if not batch:
            return
        new = copy.copy(self)
        for name in ("tasks", "states", "results", "result_of_lease", "transfers", "keys",
                     "payout_of_lease", "balances", "withdrawals", "settings", "votes",
                     "votes_ever"):
            setattr(new, name, dict(getattr(self, name)))
        new.failures = list(self.failures)
        for e in batch:
            new._apply(e)
        self.__dict__.update(new.__dict__)
        self.commits += 1

    def _apply(self, e: fx.Effect) -> None:
        match e:
            case fx.PersistTask():
                _unique(e.task_id not in self.tasks, f"task {e.task_id} inserted twice")
                self.tasks[e.task_id] = e
                self.states[e.task_id] = ("running", None)
            case fx.PersistTaskState():
                _unique(e.task_id in self.states, f"state of unknown task {e.task_id}")
                self.states[e.task_id] = (e.state, e.finished_ms)
            case fx.PersistResult():
                key = (e.task_id, e.chunk_index)
                _unique(key not in self.results, f"result of chunk {key} inserted twice")
                _unique(e.lease_id not in self.result_of_lease,
                        f"result of lease {e.lease_id} inserted twice")
                self.results[key] = self.result_of_lease[e.lease_id] = e
            case fx.PersistFailure():
                self.failures.append(e)
            case fx.PersistTransfer():
                self._transfer(e)
            case fx.PersistWithdrawal():
                self.withdrawals[e.id] = e
            case fx.PersistTaskSettings():
                self.settings[e.task_id] = (e.max_concurrency, e.priority)
            case fx.PersistVote():
                _unique(e.lease_id not in self.votes, f"vote of lease {e.lease_id} twice")
                self.votes[e.lease_id] = self.votes_ever[e.lease_id] = e
            case fx.PersistAck():  # the real store: a vote row born cleared
                _unique(e.lease_id not in self.votes_ever, f"ack of lease {e.lease_id} twice")
                self.votes_ever[e.lease_id] = e
            case fx.PersistVotesCleared():
                for lease_id, v in list(self.votes.items()):
                    if v.task_id == e.task_id and e.chunk_index in (None, v.chunk_index):
                        del self.votes[lease_id]
            case _:
                raise AssertionError(f"no table for {e!r}")

    def _transfer(self, t: fx.PersistTransfer) -> None:
        _unique(t.id not in self.transfers, f"transfer id {t.id} reused")
        if t.key is not None:
            _unique(t.key not in self.keys, f"idempotency key {t.key!r} used twice")
            self.keys[t.key] = t.id
        if t.kind == "payout":  # the partial unique index payout_once
            assert t.lease_id is not None, f"payout {t.id} names no lease"
            _unique(t.lease_id not in self.payout_of_lease, f"lease {t.lease_id} paid twice")
            self.payout_of_lease[t.lease_id] = t.id
        for account, amount in t.entries:  # CHECK (typeof(amount) = 'integer')
            if type(amount) is not int:
                raise ConstraintError(f"transfer {t.id}: {account} moves {amount!r}")
        self.transfers[t.id] = t
        for account, amount in t.entries:  # the balances upsert, one row at a time
            balance = self.balances.get(account, 0) + amount
            if account != WORLD and balance < 0:
                raise ConstraintError(f"transfer {t.id} takes {account} to {balance}")
            self.balances[account] = balance

    # ---- what the ledger holds --------------------------------------------------------

    def deposited_withdrawn(self) -> tuple[int, int]:
        """Money in from the world and out to it, ever (as ``load_money`` sums it)."""
        world = [a for t in self.transfers.values() for acc, a in t.entries if acc == WORLD]
        return -sum(a for a in world if a < 0), sum(a for a in world if a > 0)

    def pending_withdrawals(self) -> list[fx.PersistWithdrawal]:
        return [w for w in self.withdrawals.values() if w.state == "pending"]

    def paid(self, task_id: str) -> int:
        """What a task's escrow paid out for accepted chunks (``load_tasks``'s ``spent``)."""
        escrow = f"escrow:{task_id}"
        return -sum(
            a for t in self.transfers.values() if t.kind == "payout" and t.task_id == task_id
            for acc, a in t.entries if acc == escrow
        )

    # ---- restart ----------------------------------------------------------------------

    def restore(self, core: Core) -> None:
        """Boot ``core`` from the rows, as the app's lifespan does."""
        for e in sorted(self.tasks.values(), key=lambda e: e.created_ms):
            state, finished = self.states[e.task_id]
            cap, priority = self.settings.get(e.task_id, (e.max_concurrency, e.priority))
            task = Task(
                id=e.task_id, owner=e.owner, name=e.name, chunks_total=e.chunks_total,
                items_total=e.items_total, chunk_size=e.chunk_size,
                max_concurrency=cap, max_attempts=e.max_attempts,
                chunk_timeout_ms=e.chunk_timeout_ms, requirements=list(e.requirements),
                code_ref=e.code_ref, created_ms=e.created_ms,
                state=TaskState[state.upper()], finished_ms=finished,
                price=e.price_per_chunk, budget=e.budget,
                max_spend_per_minute=e.max_spend_per_minute, priority=priority,
                verification=e.verification, quorum_k=e.quorum_k, quorum_m=e.quorum_m,
                spot_per_mille=e.spot_per_mille, salt=e.salt,
            )
            for v in sorted(self.votes.values(), key=lambda v: v.lease_id):
                if v.task_id == e.task_id:
                    task.votes.setdefault(v.chunk_index, []).append(Vote(
                        v.lease_id, v.account_id, v.worker_id, v.digest, v.output, v.at_ms))
                    task.votes_held += 1
            done = [(c, r.items) for (tid, c), r in self.results.items() if tid == e.task_id]
            task.spent = self.paid(e.task_id)
            failed: dict[int, str] = {}
            failures: dict[int, int] = {}
            for f in self.failures:
                if f.task_id == e.task_id:
                    failures[f.chunk_index] = failures.get(f.chunk_index, 0) + 1
                    if f.final:
                        failed[f.chunk_index] = f.error
            core.restore_task(task, done, failed, failures)
        rows = sorted([*self.result_of_lease.values(), *self.votes_ever.values()],
                      key=lambda r: (r.at_ms, r.lease_id))
        core.restore_accepted([
            (r.lease_id, worker_key(r.account_id, r.worker_id))
            for r in rows[-core.config.recent_accepted_max:]
        ])
        core.restore_spending(sorted(
            (t.task_id, t.at_ms, -a) for t in self.transfers.values()
            if t.kind == "payout" and t.task_id is not None
            for acc, a in t.entries if acc == f"escrow:{t.task_id}"
        ))
        deposited, withdrawn = self.deposited_withdrawn()
        core.restore_money(
            dict(self.balances), list(self.keys), deposited, withdrawn,
            [Withdrawal(w.id, w.account_id, w.amount, w.state, w.created_ms)
             for w in self.pending_withdrawals()],
        )


def _unique(ok: bool, what: str) -> None:
    if not ok:
        raise ConstraintError(what)
