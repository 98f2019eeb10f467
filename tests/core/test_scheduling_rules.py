"""Scheduling rules of issue 4, each from events built by hand: fair share, live control
(pause, resume, cap, priority, cancel), verification (spot, quorum), adaptive trust, fault
attribution, 'why idle', prefetch, votes across a restart, and the money of replicas.

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
import pytest

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import (
    Deposit,
    Event,
    FailIn,
    HeartbeatIn,
    ResultIn,
    SessionClosed,
    SessionHello,
    TaskCancel,
    TaskFund,
    TaskPause,
    TaskResume,
    TaskSubmitted,
    TaskUpdate,
    Tick,
    WhyIdleIn,
)
from coordinator.core.invariants import check_invariants
from coordinator.core.ledger import PLATFORM, escrow, wallet
from coordinator.core.lifecycle import TERMINAL_TASK_STATES, ChunkState, TaskState
from coordinator.core.outcomes import POISON_WORKERS
from coordinator.core.state import Task, Vote, worker_key
from coordinator.core.trust import TrustConfig
from schema.worker import PROTOCOL_VERSION, Accepted, Idle, Rejected, Revoke

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


# ---- fair share ---------------------------------------------------------------------------


def test_two_customers_split_the_slots_evenly_whatever_their_task_sizes() -> None:
    b = Bench()
    b.submit("huge", 10_000, owner="alice")
    b.submit("small", 12, owner="bob")
    for n in range(3):
        b.hello(f"s{n}", f"wa{n}", slots=4)
    assert customers_in_flight(b) == {"alice": 6, "bob": 6}
    for _ in range(40):  # chunks finish; every freed slot keeps the split even
        b.answer(*oldest_lease(b))
        if b.core.tasks["small"].pending:
            assert customers_in_flight(b) == {"alice": 6, "bob": 6}


def test_a_latecomer_gets_the_slots_the_first_customer_frees_until_even() -> None:
    b = Bench()
    b.hello("s1", "wa", slots=10)
    b.submit("huge", 10_000, owner="alice")
    assert customers_in_flight(b) == {"alice": 10}
    b.submit("small", 50, owner="bob")  # no preemption: running chunks are left alone
    assert customers_in_flight(b) == {"alice": 10}
    for n in range(1, 6):
        effects = b.answer("s1", b.leases("s1", "huge")[0])
        assert assigned(effects) == [("s1", "small", n - 1)]
        assert customers_in_flight(b) == {"alice": 10 - n, "bob": n}
    for _ in range(20):
        b.answer(*oldest_lease(b))
        assert customers_in_flight(b) == {"alice": 5, "bob": 5}


def test_priority_weighs_a_customers_tasks_eight_to_two() -> None:
    b = Bench()
    b.submit("high", 10_000, priority=8)
    b.submit("low", 10_000, priority=2)
    b.hello("s1", "wa", slots=10)
    assert tasks_in_flight(b) == {"high": 8, "low": 2}
    for _ in range(100):  # the 4:1 split holds while chunks finish in any order
        b.answer(*oldest_lease(b))
        assert tasks_in_flight(b) == {"high": 8, "low": 2}
    b.ev(TaskUpdate, "low", priority=8)  # a live priority change: no lease is taken away
    assert tasks_in_flight(b) == {"high": 8, "low": 2}
    for _ in range(100):
        b.answer(*oldest_lease(b))
    assert tasks_in_flight(b) == {"high": 5, "low": 5}


def test_customers_first_then_priorities_within_each() -> None:
    b = Bench()
    b.submit("a-high", 1000, owner="alice", priority=8)
    b.submit("a-low", 1000, owner="alice", priority=2)
    b.submit("b-only", 1000, owner="bob", priority=1)  # its low priority is no handicap
    b.hello("s1", "wa", slots=20)
    assert tasks_in_flight(b) == {"a-high": 8, "a-low": 2, "b-only": 10}


def test_a_task_alone_gets_every_capable_slot_up_to_its_cap() -> None:
    b = Bench()
    b.hello("gpu1", "wa", slots=3, caps=["gpu", "mem_gb=16"])
    b.hello("gpu2", "wb", slots=2, caps=["gpu=1", "mem_gb=32"], prefetch=1)
    b.hello("cpu", "wc", slots=4, caps=["mem_gb=64"])
    b.submit("t1", 100, reqs=["gpu", "mem_gb>=8"])
    assert (len(b.leases("gpu1")), len(b.leases("gpu2")), len(b.leases("cpu"))) == (3, 3, 0)
    b.submit("t2", 100, reqs=["gpu"], cap=2, owner="bob")  # capped below what is free
    b.hello("gpu3", "wd", slots=8, caps=["gpu", "mem_gb=8"])
    assert b.in_flight("t2") == 2 and len(b.leases("gpu3", "t2")) == 2
    assert len(b.leases("gpu3")) == 8  # the rest of its slots go to alice's task


# ---- live control -------------------------------------------------------------------------


def test_a_lowered_cap_lets_running_chunks_finish_and_leases_nothing_until_under_it() -> None:
    b = Bench()
    b.hello("s1", "wa", slots=6)
    b.submit("t1", 100, cap=6)
    assert b.in_flight("t1") == 6
    effects = b.ev(TaskUpdate, "t1", max_concurrency=2)
    assert of(effects, fx.PersistTaskSettings) == [
        fx.PersistTaskSettings(b.eid, "t1", 2, 5)]
    assert of(effects, fx.Reply) == [fx.Reply(b.eid, ok=True)]
    assert messages(effects, Revoke) == [] and b.in_flight("t1") == 6  # nothing withdrawn
    for running in (5, 4, 3, 2):
        effects = b.answer(*oldest_lease(b))
        assert assigned(effects) == [] and b.in_flight("t1") == running
    effects = b.answer(*oldest_lease(b))  # now under the cap: one more starts
    assert len(assigned(effects)) == 1 and b.in_flight("t1") == 2
    for _ in range(10):
        b.answer(*oldest_lease(b))
        assert b.in_flight("t1") == 2


def test_the_invariant_checker_still_catches_a_lease_over_a_lowered_cap() -> None:
    """Regression for the checker (invariants.py): it refused the legal state above, and
    must still refuse a lease granted after the cap came down."""
    b = Bench()
    b.hello("s1", "wa", slots=4)
    b.submit("t1", 100, cap=3)
    b.ev(TaskUpdate, "t1", max_concurrency=1)
    task, session = b.core.tasks["t1"], b.core.sessions["s1"]
    b.core.sched._grant(task, task.cursor, session, b.now)  # what a broken scheduler would do
    task.cursor += 1
    with pytest.raises(AssertionError, match="granted after it was set"):
        check_invariants(b.core)


def test_raising_the_cap_fills_free_slots_in_the_same_turn() -> None:
    b = Bench()
    b.hello("s1", "wa", slots=6)
    b.submit("t1", 100, cap=2)
    assert b.in_flight("t1") == 2
    effects = b.ev(TaskUpdate, "t1", max_concurrency=5)
    assert assigned(effects) == [("s1", "t1", 2), ("s1", "t1", 3), ("s1", "t1", 4)]


def test_pause_revokes_at_once_uncharged_and_resume_leases_again() -> None:
    b = Bench()
    b.deposit("alice", 1000)
    b.hello("s1", "wa", slots=2, prefetch=1)  # the prefetched lease is revoked as well
    b.hello("s2", "wb", slots=1)
    b.submit("t1", 10, price=100, budget=1000)
    held = {sid: b.leases(sid) for sid in ("s1", "s2")}
    held_chunks = sorted(x.chunk for x in b.core.leases.values())
    assert b.in_flight("t1") == 4
    effects = b.ev(TaskPause, "t1")
    assert sorted(messages(effects, Revoke), key=lambda m: m[1].lease_id) == [
        (sid, Revoke(x, "task paused by its owner")) for sid, xs in held.items() for x in xs]
    assert of(effects, fx.PersistTaskState) == [
        fx.PersistTaskState(b.eid, "t1", "paused", None)]
    assert of(effects, fx.PersistFailure) == [] and of(effects, fx.PersistTransfer) == []
    assert of(effects, fx.Reply) == [fx.Reply(b.eid, ok=True)]
    task = b.core.tasks["t1"]
    assert (task.state, task.leased, task.pending, task.failures) == (
        TaskState.PAUSED, 0, 10, {})
    assert b.balance(escrow("t1")) == 1000 and b.balance(wallet("wa")) == 0
    # a result that was already on its way is fenced off, and nothing is leased instead
    late = b.answer("s1", held["s1"][0])
    assert late == [fx.Send(b.eid, "s1", Rejected(
        held["s1"][0], "lease is unknown, expired or revoked; its chunk went back to the "
        "queue"))]
    assert b.why("s2") == ["task t1 is paused"]
    assert assigned(b.tick(100)) == []
    assert b.ev(TaskPause, "t1") == [fx.Reply(b.eid, ok=True)]  # pausing twice is no error
    effects = b.ev(TaskResume, "t1")
    assert of(effects, fx.PersistTaskState) == [
        fx.PersistTaskState(b.eid, "t1", "running", None)]
    again = of(effects, fx.AssignChunk)
    assert {a.attempt for a in again} == {1}  # no attempt was counted against them
    assert sorted(a.chunk_index for a in again) == held_chunks  # the same chunks, first
    b.answer("s2", b.leases("s2")[0])
    assert b.balance(wallet("wb")) == 90 and b.balance(PLATFORM) == 10


def test_cancel_while_paused_refunds_everything_and_ends_the_task() -> None:
    b = Bench()
    b.deposit("alice", 500)
    b.hello("s1", "wa", slots=2)
    b.submit("t1", 5, price=100, budget=500)
    b.answer("s1", b.leases("s1")[0])  # one chunk paid
    b.ev(TaskPause, "t1")
    effects = b.ev(TaskCancel, "t1")
    assert messages(effects, Revoke) == []  # pause already withdrew them
    assert of(effects, fx.PersistTaskState) == [
        fx.PersistTaskState(b.eid, "t1", "cancelled", b.now)]
    assert b.core.tasks["t1"].state is TaskState.CANCELLED
    assert (b.balance(escrow("t1")), b.balance(wallet("alice"))) == (0, 400)
    assert b.ev(TaskResume, "t1") == [fx.Reply(
        b.eid, ok=False, error="task is already cancelled; nothing to resume", status=409)]
    assert assigned(b.tick(100)) == [] and b.why("s1") == ["no task has pending work"]


def test_steering_an_unknown_or_finished_task_is_refused() -> None:
    b = Bench()
    assert b.ev(TaskPause, "nope") == [fx.Reply(b.eid, ok=False, error="no such task",
                                                status=404)]
    b.hello("s1", "wa")
    b.submit("t1", 1)
    b.answer("s1", b.leases("s1")[0])
    for kind in (TaskPause, TaskResume, TaskUpdate):
        [reply] = of(b.ev(kind, "t1"), fx.Reply)
        assert (reply.ok, reply.status) == (False, 409) and "completed" in reply.error


# ---- quorum -------------------------------------------------------------------------------


def quorum_bench(price: int = 100, chunks: int = 1, budget: int | None = None) -> Bench:
    b = Bench()
    b.deposit("alice", 10_000)
    b.submit("q", chunks, verification="quorum", k=3, m=2, price=price,
             budget=3 * price * chunks if budget is None else budget)
    return b


def test_quorum_two_of_three_accepts_when_two_accounts_agree_and_never_runs_a_third() -> None:
    b = quorum_bench(price=100)
    b.hello("A", "acct-a")
    [a] = b.leases("A")
    effects = b.answer("A", a)
    assert of(effects, fx.PersistResult) == [] and len(of(effects, fx.PersistVote)) == 1
    assert messages(effects, Accepted) == [("A", Accepted(a, 0))]  # held; paid at the verdict
    task = b.core.tasks["q"]
    assert (task.votes_held, task.chunk_state[0], task.done) == (1, ChunkState.PENDING, 0)
    assert assigned(b.tick(100)) == []  # the only worker already voted
    b.hello("B", "acct-b")
    b.hello("C", "acct-c")
    [bl] = b.leases("B")
    assert b.leases("C") == []  # one replica at a time: a chunk has at most one lease
    effects = b.answer("B", bl)
    [row] = of(effects, fx.PersistResult)
    assert (row.lease_id, row.account_id, row.output) == (a, "acct-a", encode(0))
    assert messages(effects, Accepted) == [("B", Accepted(bl, 90))]
    assert task.state is TaskState.COMPLETED and task.votes == {} and task.votes_held == 0
    assert not any(sid == "C" for sid, _, _ in assigned(b.log))  # the third never ran
    account_of = {a: "acct-a", bl: "acct-b"}
    paid = b.payouts()
    assert sorted(p.lease_id for p in paid if p.lease_id is not None) == sorted(account_of)
    for p in paid:  # each agreeing replica: the price, split into the fee and its share
        assert p.lease_id is not None
        assert sorted(p.entries) == sorted([(escrow("q"), -100), (PLATFORM, 10),
                                            (wallet(account_of[p.lease_id]), 90)])
    assert (b.balance(wallet("acct-a")), b.balance(wallet("acct-b")),
            b.balance(wallet("acct-c"))) == (90, 90, 0)
    assert b.balance(PLATFORM) == 20
    assert b.balance(wallet("alice")) == 10_000 - 200  # the unused third came back
    # a re-sent result is acknowledged again and paid no second time
    assert b.answer("A", a) == [fx.Send(b.eid, "A", Accepted(a))]
    assert len(b.payouts()) == 2


def test_a_disagreeing_replica_is_not_paid_and_loses_its_streak() -> None:
    b = Bench()
    b.deposit("alice", 10_000)
    b.hello("A", "acct-a")
    b.hello("B", "acct-b")
    b.submit("warm", 1, verification="quorum", k=3, m=2, price=100, budget=300)
    for _ in range(3):  # A and B agree: both validated
        for sid in ("A", "B"):
            for x in b.leases(sid):
                b.answer(sid, x)
        b.tick(b.now + 100)
    standing_b = b.core.trust.of(worker_key("acct-b", "B"))
    assert (standing_b.streak, standing_b.valid) == (1, 1)
    b.submit("q", 1, verification="quorum", k=3, m=2, price=100, budget=300)
    first = b.holder("q", 0)
    assert first is not None
    b.answer(first, b.leases(first, "q")[0], None if first == "A" else 999)
    b.tick(b.now + 100)
    second = b.holder("q", 0)
    assert second is not None and second != first
    b.answer(second, b.leases(second, "q")[0], None if second == "A" else 999)
    assert b.core.tasks["q"].votes_held == 2  # they disagree: a third decides
    b.hello("C", "acct-c")
    [c] = b.leases("C")
    effects = b.answer("C", c)
    [row] = of(effects, fx.PersistResult)
    assert (row.account_id, row.output) == ("acct-a", encode(0))
    paid = {p.lease_id for p in of(effects, fx.PersistTransfer) if p.kind == "payout"}
    assert paid == {row.lease_id, c}  # A's vote (the first that agreed) and C's
    assert b.balance(wallet("acct-b")) == 90  # only for the chunk it got right
    assert (standing_b.streak, standing_b.invalid) == (0, 1)
    standing_a = b.core.trust.of(worker_key("acct-a", "A"))
    assert (standing_a.streak, standing_a.invalid) == (2, 0)


def test_replicas_never_go_twice_to_one_account() -> None:
    b = Bench()
    b.hello("A1", "acct-a")
    b.hello("A2", "acct-a")  # a second worker of the same account
    b.submit("q", 1, verification="quorum", k=2, m=2)
    first = b.holder("q", 0)
    assert first in ("A1", "A2")
    other = "A2" if first == "A1" else "A1"
    b.answer(first, b.leases(first)[0])
    assert assigned(b.tick(100)) == []
    assert b.why(other) == ["task q: its pending chunks need a different worker "
                            "(verification or retry on another account)"]
    effects = b.hello("B", "acct-b")
    assert assigned(effects) == [("B", "q", 0)]
    [row] = of(b.answer("B", b.leases("B")[0]), fx.PersistResult)
    assert row.account_id == "acct-a" and b.core.tasks["q"].state is TaskState.COMPLETED
    accounts = [b.core.sessions[sid].account_id for sid, _, _ in assigned(b.log)]
    assert sorted(accounts) == ["acct-a", "acct-b"]


@pytest.mark.parametrize("how", ["closed", "silent"])
def test_a_quorum_member_that_disconnects_hands_its_replica_to_another_account(
    how: str
) -> None:
    b = quorum_bench(price=100)
    b.hello("A", "acct-a")
    [a] = b.leases("A")
    b.answer("A", a)  # A's vote is in
    b.hello("B", "acct-b")
    [lost] = b.leases("B")
    if how == "closed":
        b.ev(SessionClosed, "B", "connection lost")
        assert b.core.leases[lost].session_id is None  # orphaned: B may still come back
        b.hello("C", "acct-c")
        assert b.leases("C") == []
        effects = b.tick(GRACE + 1)
    else:
        b.hello("C", "acct-c")
        effects = b.tick(LEASE + 1, beat=["A", "C"])
        assert fx.CloseSession(b.eid, "B", 4001, f"no heartbeat for {LEASE} ms") in effects
    assert assigned(effects) == [("C", "q", 0)]  # the chunk came back and went on at once
    assert [sid for sid, _, _ in assigned(b.log)] == ["A", "B", "C"]  # never A again
    b.ev(SessionClosed, "A")  # a voter that leaves is still paid when its vote wins
    effects = b.answer("C", b.leases("C")[0])
    assert len(of(effects, fx.PersistResult)) == 1
    assert of(b.log, fx.PersistFailure) == [] and b.core.tasks["q"].failures == {}
    assert worker_key("acct-b", "B") not in b.core.trust.workers  # a death blames nobody
    assert (b.balance(wallet("acct-a")), b.balance(wallet("acct-b")),
            b.balance(wallet("acct-c"))) == (90, 0, 90)


def test_a_restart_keeps_the_votes_and_the_chunk_completes_on_another_account() -> None:
    b = quorum_bench(price=100, chunks=2)
    b.hello("A", "acct-a", slots=2)
    a0, a1 = b.leases("A")
    b.answer("A", a0)
    b.answer("A", a1, 777)  # wrong on chunk 1
    b.ev(SessionClosed, "A")
    # the store: what load_tasks and load_money hand a freshly booted core
    [row] = of(b.log, fx.PersistTask)
    votes = of(b.log, fx.PersistVote)
    task = Task(
        id=row.task_id, owner=row.owner, name=row.name, chunks_total=row.chunks_total,
        items_total=row.items_total, chunk_size=row.chunk_size,
        max_concurrency=row.max_concurrency, max_attempts=row.max_attempts,
        chunk_timeout_ms=row.chunk_timeout_ms, requirements=list(row.requirements),
        code_ref=row.code_ref, created_ms=row.created_ms, price=row.price_per_chunk,
        budget=row.budget, priority=row.priority, verification=row.verification,
        quorum_k=row.quorum_k, quorum_m=row.quorum_m, spot_per_mille=row.spot_per_mille,
        salt=row.salt,
    )
    for v in sorted(votes, key=lambda v: v.lease_id):
        task.votes.setdefault(v.chunk_index, []).append(
            Vote(v.lease_id, v.account_id, v.worker_id, v.digest, v.output, v.at_ms))
        task.votes_held += 1
    ledger = b.core.treasury.ledger
    r = Bench(epoch=2)
    r.now = b.now + 5000
    r.core.restore_money(dict(ledger.balances), sorted(ledger.keys), ledger.deposited,
                         ledger.withdrawn, [])
    r.core.restore_task(task, [], {}, {})
    check_invariants(r.core)
    r.hello("A", "acct-a", slots=2)
    assert r.leases("A") == []  # both chunks hold its vote: not for it again
    r.hello("B", "acct-b", slots=2)
    b0, b1 = sorted(r.leases("B"), key=lambda x: r.core.leases[x].chunk)
    [row0] = of(r.answer("B", b0), fx.PersistResult)
    assert (row0.chunk_index, row0.lease_id, row0.account_id) == (0, a0, "acct-a")
    assert of(r.answer("B", b1), fx.PersistResult) == []  # 1 against A's wrong one: more
    r.hello("C", "acct-c")
    r.tick(r.now + 100)
    [c1] = r.leases("C")
    [row1] = of(r.answer("C", c1), fx.PersistResult)
    assert (row1.chunk_index, row1.lease_id, row1.output) == (1, b1, encode(10))
    assert r.core.tasks["q"].state is TaskState.COMPLETED
    paid = sorted((p.chunk, p.lease_id) for p in r.payouts())
    assert paid == sorted([(0, a0), (0, b0), (1, b1), (1, c1)])
    bal = r.core.treasury.ledger.balance
    assert (bal(wallet("acct-a")), bal(wallet("acct-b")), bal(wallet("acct-c"))) == (
        90, 180, 90)
    assert bal(wallet("alice")) == 10_000 - 400 and bal(escrow("q")) == 0
    assert r.core.trust.of(worker_key("acct-a", "A")).invalid == 1


def test_escrow_reserves_for_votes_awaiting_a_verdict() -> None:
    b = Bench()
    b.deposit("alice", 10_000)
    b.hello("A", "acct-a", slots=3)
    b.submit("q", 3, verification="quorum", k=3, m=2, price=100, budget=300)
    assert b.in_flight("q") == 3  # 300 in escrow covers three chunks in flight
    b.answer("A", b.leases("A")[0])
    task = b.core.tasks["q"]
    assert (task.leased, task.votes_held, b.core.treasury.reserved(task)) == (2, 1, 300)
    b.hello("B", "acct-b")
    assert b.leases("B") == [] and b.why("B") == ["task q needs funds"]
    effects = b.ev(TaskFund, "q", 100)
    assert assigned(effects) == [("B", "q", 0)]
    b.answer("B", b.leases("B")[0])  # agrees: both replicas are paid, once each
    assert [(p.chunk, -dict(p.entries)[escrow("q")]) for p in b.payouts()] == [
        (0, 100), (0, 100)]
    assert b.balance(escrow("q")) == 200 and b.core.treasury.reserved(task) == 200


# ---- spot checks and trust ----------------------------------------------------------------


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


@pytest.mark.parametrize(("per_mille", "second_opinions"), [(1000, 12), (0, 0)])
def test_spot_checks_all_or_none(per_mille: int, second_opinions: int) -> None:
    b = Bench()
    b.hello("A", "acct-a", slots=3)
    b.hello("B", "acct-b", slots=3)
    b.submit("s", 12, verification="spot", spot=per_mille, salt="salt")
    run_all(b, "s")
    assert len(of(b.log, fx.PersistVote)) == second_opinions
    rows = of(b.log, fx.PersistResult)
    assert sorted(r.chunk_index for r in rows) == list(range(12))
    if per_mille:  # each accepted chunk ran on both accounts
        runs = Counter(e.chunk_index for e in of(b.log, fx.AssignChunk))
        assert runs == dict.fromkeys(range(12), 2)


def salted_share(salt: str, chunks: int, rate: int) -> int:
    """How many chunks the salt picks at ``rate`` per mille (computed apart from the core)."""
    return sum(
        int.from_bytes(hashlib.sha256(f"{salt}:{c}".encode()).digest()[:4], "big") % 1000 < rate
        for c in range(chunks))


def test_trusted_workers_are_spot_checked_a_quarter_as_often() -> None:
    chunks, rate, salt = 400, 400, "pepper"

    def checks(trusted_after: int, warm_up: bool) -> tuple[int, bool]:
        b = Bench(CoreConfig(trust=TrustConfig(trusted_after=trusted_after)))
        b.hello("A", "acct-a", slots=8)
        b.hello("B", "acct-b", slots=8)
        if warm_up:  # every chunk checked: both build a run of validated results
            b.submit("warm", 4, verification="spot", spot=1000, salt="w")
            run_all(b, "warm")
        before = len(of(b.log, fx.PersistVote))
        b.submit("s", chunks, verification="spot", spot=rate, salt=salt)
        run_all(b, "s")
        trusted = all(b.core.trust.trusted(worker_key(a, s)) for a, s in
                      (("acct-a", "A"), ("acct-b", "B")))
        return len(of(b.log, fx.PersistVote)) - before, trusted

    untrusted, was_trusted = checks(10**9, warm_up=False)
    assert (untrusted, was_trusted) == (salted_share(salt, chunks, rate), False)
    trusted, is_trusted = checks(3, warm_up=True)
    assert (trusted, is_trusted) == (salted_share(salt, chunks, rate // 4), True)
    print(f"spot checks of {chunks} chunks at {rate}/1000: {untrusted} untrusted, "
          f"{trusted} trusted")
    assert trusted * 2 < untrusted


def test_an_invalid_result_ends_the_trust_a_streak_built() -> None:
    config = CoreConfig(trust=TrustConfig(trusted_after=2, trusted_spot_divisor=1,
                                          invalid_quarantine=99))
    b = Bench(config)
    b.hello("A", "acct-a")
    b.hello("B", "acct-b")
    b.submit("warm", 3, verification="spot", spot=1000, salt="w")
    run_all(b, "warm")
    key_a = worker_key("acct-a", "A")
    assert b.core.trust.trusted(key_a) and b.core.trust.of(key_a).streak == 3
    b.ev(SessionClosed, "B")
    b.submit("s", 1, verification="spot", spot=1000, salt="x")
    [x] = b.leases("A")
    b.answer("A", x, 5)  # wrong, from a trusted worker: still checked (divisor 1 here)
    b.hello("B", "acct-b")
    b.answer("B", b.leases("B")[0])
    assert b.core.tasks["s"].votes_held == 2  # they disagree: a third decides
    b.hello("C", "acct-c")
    [row] = of(b.answer("C", b.leases("C")[0]), fx.PersistResult)
    assert row.account_id == "acct-b" and row.output == encode(0)
    assert not b.core.trust.trusted(key_a)
    assert (b.core.trust.of(key_a).streak, b.core.trust.of(key_a).invalid) == (0, 1)


# ---- fault attribution --------------------------------------------------------------------


def test_a_chunk_failing_on_three_workers_is_poison_and_blames_nobody() -> None:
    b = Bench()
    for n in range(4):
        b.hello(f"w{n}", f"acct{n}")
    b.submit("t1", 2, attempts=10)
    failed_on: list[str] = []
    for _ in range(20):
        if b.core.tasks["t1"].state in TERMINAL_TASK_STATES:
            break
        for sid in list(b.core.sessions):
            for x in b.leases(sid):
                if b.core.leases[x].chunk == 0:
                    failed_on.append(sid)
                    b.fail(sid, x, f"boom on {sid}")
                else:
                    b.answer(sid, x)
        b.tick(b.now + 10)
    assert len(failed_on) == len(set(failed_on)) == POISON_WORKERS  # never twice on one
    final = [f for f in of(b.log, fx.PersistFailure) if f.final]
    assert [(f.chunk_index, f.error) for f in final] == [
        (0, f"poison: failed on 3 workers; last: boom on {failed_on[-1]}")]
    task = b.core.tasks["t1"]
    assert (task.state, task.done, task.failed) == (TaskState.FAILED, 1, 1)
    assert all(not s.blame for s in b.core.trust.workers.values())
    assert all(b.core.trust.lease_limit(s.worker_key, b.now) is None
               for s in b.core.sessions.values())


def test_a_flaky_worker_is_limited_to_one_lease_then_quarantined() -> None:
    b = Bench()  # default trust: 3 blamed chunks -> one lease at a time, 6 -> quarantine
    b.hello("F", "flaky", slots=4)
    b.hello("G", "good", slots=2)
    b.submit("t1", 200, attempts=10)
    key = worker_key("flaky", "F")
    trust = b.core.trust
    saw_limited = saw_quarantined = False
    for _ in range(200):
        for x in b.leases("F"):
            effects = b.fail("F", x, "flaky")
            if trust.lease_limit(key, b.now) == 1 and assigned(effects):  # older leases run on
                assert len(b.leases("F")) == 1, "a rate-limited worker got a second lease"
            assert not (trust.lease_limit(key, b.now) == 0 and assigned(effects))
        for x in b.leases("G"):
            b.answer("G", x)
        limit = trust.lease_limit(key, b.now)
        if limit == 1 and b.leases("F"):
            saw_limited = True
            assert b.why("F") == [
                f"this worker is limited to one chunk at a time: {len(trust.of(key).blame)} "
                "chunks failed here recently that other workers completed"]
        if limit == 0:
            saw_quarantined = True
            for x in b.leases("F"):  # what it held runs out; nothing new comes
                assert assigned(b.fail("F", x, "flaky")) == []
            b.tick(b.now + 10)
            assert b.leases("F") == []
            assert b.why("F") == ["this worker is quarantined for 600 more s: 6 chunks "
                                  "failed here that other workers then completed"]
            break
        b.tick(b.now + 10)
    assert saw_limited and saw_quarantined
    assert trust.lease_limit(worker_key("good", "G"), b.now) is None
    assert not trust.of(worker_key("good", "G")).blame


def test_failing_a_chunk_then_completing_it_yourself_is_no_blame() -> None:
    """Regression (outcomes.py, _settle): the worker that completed a chunk was blamed for
    its own earlier failure of it, so a lone worker with passing hiccups got rate-limited."""
    b = Bench()
    b.hello("W", "acct-w")
    b.submit("t1", 4, attempts=3)
    for _ in range(4):
        [x] = b.leases("W")
        effects = b.fail("W", x, "hiccup")
        [again] = of(effects, fx.AssignChunk)  # nobody else: the same worker retries it
        b.answer("W", again.lease_id)
    assert b.core.tasks["t1"].state is TaskState.COMPLETED
    key = worker_key("acct-w", "W")
    assert not b.core.trust.of(key).blame and b.core.trust.lease_limit(key, b.now) is None


def test_all_capable_workers_quarantined_the_task_waits_and_says_why() -> None:
    trust = TrustConfig(rate_limit_blame=1, quarantine_blame=2, quarantine_ms=60_000)
    b = Bench(CoreConfig(trust=trust))
    b.hello("Q1", "q1", caps=["gpu"])
    b.hello("Q2", "q2", caps=["gpu"])
    b.hello("G", "g")  # completes what they fail, but has no gpu
    b.submit("t1", 50, attempts=10)
    quarantined = {sid: worker_key(sid.lower(), sid) for sid in ("Q1", "Q2")}
    for _ in range(100):
        if all(b.core.trust.lease_limit(k, b.now) == 0 for k in quarantined.values()):
            break
        for sid in ("Q1", "Q2"):
            for x in b.leases(sid):
                b.fail(sid, x, "flaky")
        for x in b.leases("G"):
            b.answer("G", x)
        b.tick(b.now + 10)
    else:
        raise AssertionError("the gpu workers were never quarantined")
    b.ev(TaskCancel, "t1")
    effects = b.submit("gpu-task", 4, reqs=["gpu"], owner="bob")
    assert assigned(effects) == [] and assigned(b.tick(b.now + 10)) == []
    for sid in ("Q1", "Q2"):
        [reason] = b.why(sid)
        assert reason.startswith("this worker is quarantined for 60 more s: 2 chunks failed "
                                 "here that other workers then completed"), reason
    assert b.why("G") == ["task gpu-task requires gpu"]
    # the quarantine ends: the very next tick fills them (regression: core.py _tick never
    # noticed a quarantine ending, so the task waited for some unrelated event)
    ends = sorted((b.core.trust.of(k).quarantined_until, sid) for sid, k in
                  quarantined.items())
    for until, sid in ends:
        assert assigned(b.tick(until - 1)) == []
        assert [who for who, _, _ in assigned(b.tick(until))] == [sid]


@pytest.mark.parametrize("how", ["closed", "silent"])
def test_a_worker_death_counts_against_no_chunk_and_blames_nobody(how: str) -> None:
    b = Bench()
    b.hello("D", "acct-d", slots=2)
    b.submit("t1", 2, attempts=1)  # one failed attempt would fail a chunk for good
    held = b.leases("D")
    if how == "closed":
        b.ev(SessionClosed, "D", "connection lost")
        effects = b.tick(GRACE)
    else:
        effects = b.tick(LEASE + 1, beat=[])
        assert fx.CloseSession(b.eid, "D", 4001, f"no heartbeat for {LEASE} ms") in effects
    task = b.core.tasks["t1"]
    assert (task.leased, task.pending, task.failures, task.failed_on) == (0, 2, {}, {})
    assert all(x not in b.core.leases for x in held)
    b.hello("E", "acct-e", slots=2)
    for x in b.leases("E"):
        b.answer("E", x)
    assert task.state is TaskState.COMPLETED and of(b.log, fx.PersistFailure) == []
    assert b.core.trust.workers == {}


# ---- why idle and prefetch ----------------------------------------------------------------


def test_why_idle_names_every_reason() -> None:
    b = Bench()
    b.hello("busy", "wa")
    assert b.why("busy") == ["no task has pending work"]
    b.submit("capped", 3, cap=1)
    assert b.leases("busy") != []
    b.hello("s1", "wb", caps=["mem_gb=4", "python=3.11"])
    b.submit("needs-gpu", 2, reqs=["gpu", "mem_gb>=8", "python>=3.10"], owner="bob")
    b.submit("paused", 2, reqs=["gpu"], owner="carol")
    b.ev(TaskPause, "paused")
    b.submit("broke", 2, owner="dave", price=100)  # no budget
    assert b.leases("s1") == []
    assert b.why("s1") == [
        "task capped is at its cap of 1 chunks at once",
        "task needs-gpu requires gpu, mem_gb>=8",
        "task paused is paused",
        "task broke needs funds",
    ]
    assert b.why("busy") == ["every slot (and prefetch) is in use"]


def test_why_idle_at_cap() -> None:
    b = Bench()
    b.hello("busy", "wa")
    b.submit("t1", 5, cap=1)
    b.hello("idle", "wb")
    assert b.leases("idle") == []
    assert b.why("idle") == ["task t1 is at its cap of 1 chunks at once"]


def test_prefetch_holds_slots_plus_prefetch_leases() -> None:
    b = Bench()
    b.submit("t1", 100)
    b.hello("s1", "wa", slots=2, prefetch=3)
    b.hello("s2", "wb", slots=2)
    assert (len(b.leases("s1")), len(b.leases("s2"))) == (5, 2)
    effects = b.answer("s1", b.leases("s1")[0])
    assert len(assigned(effects)) == 1 and len(b.leases("s1")) == 5
