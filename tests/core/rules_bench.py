"""The bench for the scheduling-rule tests (test_rules_*.py): each rule from events built by
hand.

A ``Bench`` numbers the events and keeps the clock; after every event it checks the core's
invariants, that every effect repeats its cause, and that each running task's escrow still
covers the chunks it has in flight plus the votes awaiting a verdict. Defaults: heartbeat
2000 ms, lease 3500 ms, disconnect grace 1000 ms, epoch 1, a 10 % platform fee.
Chunks hold one item each; the right answer for chunk ``c`` is ``[10 * c]``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import (
    Deposit,
    Event,
    FailIn,
    HeartbeatIn,
    ResultIn,
    SessionHello,
    TaskSubmitted,
    Tick,
    WhyIdleIn,
)
from coordinator.core.invariants import check_invariants
from coordinator.core.ledger import escrow
from coordinator.core.lifecycle import TERMINAL_TASK_STATES
from schema.worker import PROTOCOL_VERSION, Idle

CFG = CoreConfig()
LEASE, GRACE = CFG.lease_ms, CFG.disconnect_grace_ms
E = TypeVar("E", bound=fx.Effect)


def right(chunk: int) -> int:
    return 10 * chunk


def encode(value: int) -> bytes:
    return msgspec.msgpack.encode([value])


def of(effects: Iterable[fx.Effect], kind: type[E]) -> list[E]:
    return [e for e in effects if isinstance(e, kind)]


class Bench:
    """One core fed hand-made events: ``bench.ev(TaskPause, "t1")`` builds
    ``TaskPause(eid, now, "t1")`` with the next event id and the bench's clock."""

    def __init__(self, config: CoreConfig = CFG, epoch: int = 1) -> None:
        self.core = Core(config, epoch)
        self.eid = 0
        self.now = 0
        self.log: list[fx.Effect] = []  # every effect so far

    def ev(self, kind: type[Event], *args: Any, **kw: Any) -> list[fx.Effect]:
        self.eid += 1
        event = kind(self.eid, self.now, *args, **kw)
        effects = self.core.handle(event)
        check_invariants(self.core)
        for e in effects:
            assert e.cause == event.eid, f"{e!r} does not repeat its cause {event.eid}"
        for task in self.core.tasks.values():
            if task.state not in TERMINAL_TASK_STATES:
                held = self.core.treasury.ledger.balance(escrow(task.id))
                assert held >= (task.leased + task.votes_held) * task.price, (
                    f"{task.id}: escrow {held} does not cover {task.leased} leases and "
                    f"{task.votes_held} votes at {task.price}")
        self.log += effects
        return effects

    # ---- events ---------------------------------------------------------------------

    def hello(self, sid: str, account: str, *, slots: int = 1, caps: Sequence[str] = (),
              prefetch: int = 0, held: Sequence[int] = ()) -> list[fx.Effect]:
        """Worker ``sid`` of ``account`` (the worker id is the session id)."""
        return self.ev(SessionHello, sid, account, sid, list(caps), slots, list(held),
                       PROTOCOL_VERSION, prefetch=prefetch)

    def submit(self, task_id: str, chunks: int, *, owner: str = "alice", cap: int = 100,
               priority: int = 5, reqs: Sequence[str] = (), attempts: int = 3,
               price: int = 0, budget: int = 0, verification: str = "none", k: int = 1,
               m: int = 1, spot: int = 0, salt: str = "") -> list[fx.Effect]:
        return self.ev(TaskSubmitted, task_id, owner, f"name of {task_id}", chunks, chunks, 1,
                       cap, attempts, 60_000, list(reqs), f"code-{task_id}", price, budget,
                       0, priority, verification, k, m, spot, salt)

    def deposit(self, account: str, amount: int) -> list[fx.Effect]:
        return self.ev(Deposit, account, amount, f"dep-{self.eid + 1}", "sandbox")

    def answer(self, sid: str, lease_id: int, value: int | None = None, *,
               chunk: int | None = None) -> list[fx.Effect]:
        """A result for the lease: the right answer for its chunk unless ``value`` is
        given (``chunk`` names the chunk of a lease the core no longer holds)."""
        if chunk is None:
            lease = self.core.leases.get(lease_id)
            chunk = lease.chunk if lease is not None else 0
        out = encode(right(chunk) if value is None else value)
        return self.ev(ResultIn, sid, lease_id, out, hashlib.sha256(out).hexdigest())

    def fail(self, sid: str, lease_id: int, error: str = "boom",
             retryable: bool = True) -> list[fx.Effect]:
        return self.ev(FailIn, sid, lease_id, error, retryable)

    def tick(self, to: int | None = None, *, beat: Sequence[str] | None = None
             ) -> list[fx.Effect]:
        """Move the clock to ``to``; the live sessions (or only ``beat``) heartbeat first."""
        if to is not None:
            self.now = to
        for sid in list(self.core.sessions) if beat is None else beat:
            if sid in self.core.sessions:
                self.ev(HeartbeatIn, sid)
        return self.ev(Tick)

    def why(self, sid: str) -> list[str]:
        [message] = [e.message for e in self.ev(WhyIdleIn, sid) if isinstance(e, fx.Send)]
        assert isinstance(message, Idle)
        return list(message.reasons)

    # ---- looking ----------------------------------------------------------------------

    def leases(self, sid: str, task_id: str | None = None) -> list[int]:
        return sorted(x for x in self.core.sessions[sid].leases
                      if task_id is None or self.core.leases[x].task_id == task_id)

    def holder(self, task_id: str, chunk: int) -> str | None:
        lease_id = self.core.tasks[task_id].lease_of_chunk.get(chunk)
        return None if lease_id is None else self.core.leases[lease_id].session_id

    def in_flight(self, task_id: str) -> int:
        return self.core.tasks[task_id].leased

    def balance(self, account: str) -> int:
        return self.core.treasury.ledger.balance(account)

    def payouts(self) -> list[fx.PersistTransfer]:
        return [t for t in of(self.log, fx.PersistTransfer) if t.kind == "payout"]


def assigned(effects: Iterable[fx.Effect]) -> list[tuple[str, str, int]]:
    """(session, task, chunk) of every assignment, in order."""
    return [(e.session_id, e.task_id, e.chunk_index) for e in of(effects, fx.AssignChunk)]


def messages(effects: Iterable[fx.Effect], kind: type[Any]) -> list[tuple[str, Any]]:
    return [(e.session_id, e.message) for e in of(effects, fx.Send)
            if isinstance(e.message, kind)]


def customers_in_flight(bench: Bench) -> Counter[str]:
    return Counter(bench.core.tasks[x.task_id].owner for x in bench.core.leases.values())


def tasks_in_flight(bench: Bench) -> Counter[str]:
    return Counter(x.task_id for x in bench.core.leases.values())


def oldest_lease(bench: Bench) -> tuple[str, int]:
    lease = bench.core.leases[min(bench.core.leases)]
    assert lease.session_id is not None
    return lease.session_id, lease.id


def run_all(b: Bench, task_id: str, rounds: int = 10_000) -> None:
    """Every session answers every lease of the task rightly, until the task ends."""
    for _ in range(rounds):
        if b.core.tasks[task_id].state in TERMINAL_TASK_STATES:
            return
        for sid in list(b.core.sessions):
            for x in b.leases(sid, task_id):
                b.answer(sid, x)
        b.tick(b.now + 10)
    raise AssertionError(f"{task_id} did not finish")
