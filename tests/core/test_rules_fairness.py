"""Scheduling rules of issue 4, each from events built by hand: fair share between
customers and between a customer's tasks (priority), caps and capabilities, live control
(pause, resume, cap, priority, cancel), 'why idle', and prefetch. The bench and its
defaults are in ``rules_bench.py``.
"""

from __future__ import annotations

import pytest

from coordinator.core import effects as fx
from coordinator.core.events import TaskCancel, TaskPause, TaskResume, TaskUpdate
from coordinator.core.invariants import check_invariants
from coordinator.core.ledger import PLATFORM, escrow, wallet
from coordinator.core.lifecycle import TaskState
from schema.worker import Rejected, Revoke
from tests.core.rules_bench import (
    Bench,
    assigned,
    customers_in_flight,
    messages,
    of,
    oldest_lease,
    tasks_in_flight,
)

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
