"""Unit tests of the pure core: leases over time.

Silent sessions, disconnects and reconnects (orphaned leases, the grace, resuming), prefetch
leases, leases revoked by a cancel or a chunk deadline, and restarts: restoring tasks and
lease ids that never repeat across epochs.

Events are built by hand (eid and at_ms written out) with the helpers of ``core_steps``;
every event goes through ``step``, which checks the core's invariants afterwards.
"""

from __future__ import annotations

from collections import deque

import pytest

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import EpochStarted, HeartbeatIn, SessionClosed, TaskCancel, Tick
from coordinator.core.invariants import check_invariants
from coordinator.core.lifecycle import TaskState
from coordinator.core.state import Task
from schema.worker import Accepted, Rejected, Revoke, Welcome
from tests.core.core_steps import (
    ACCT,
    CFG,
    GRACE,
    HB,
    LEASE,
    assign,
    assign_effects,
    assigns,
    hello,
    lid,
    of,
    result,
    sent,
    step,
    submit,
)

# ---- silence, disconnects and reconnects ------------------------------------------------


def test_silent_session_is_closed_by_tick_and_its_leases_requeued(core: Core) -> None:
    step(core, submit(1, 0, items=2))
    step(core, hello(2, 0, "s1", "w1"))
    step(core, hello(3, 0, "s2", "w2"))
    step(core, HeartbeatIn(4, 3000, "s2"))
    assert step(core, Tick(5, LEASE)) == []  # silent exactly lease_ms: still alive
    effects = step(core, Tick(6, LEASE + 1))
    assert effects == [
        fx.CloseSession(6, "s1", 4001, f"no heartbeat for {LEASE} ms"),
        fx.TaskChanged(6, "t1"),
        assign(6, "s2", lid(2), 0),  # expiry is not a failure: still attempt 1
        fx.TaskChanged(6, "t1"),
    ]
    assert "s1" not in core.sessions and core.tasks["t1"].failures == {}
    assert step(core, result(7, LEASE + 2, "s1", lid(1))) == []  # the zombie is not heard


def test_heartbeat_keeps_a_session_alive(core: Core) -> None:
    step(core, submit(1, 0, items=2))
    step(core, hello(2, 0, "s1"))
    for i, at in enumerate(range(HB, 5 * HB, HB)):
        assert step(core, HeartbeatIn(10 + i, at, "s1")) == []
        assert step(core, Tick(20 + i, at + LEASE)) == []
    assert core.leases[lid(1)].session_id == "s1"


def test_disconnect_orphans_leases_and_the_same_worker_resumes_them(core: Core) -> None:
    step(core, submit(1, 0, items=6))  # three chunks
    step(core, hello(2, 0, "s1", slots=2))
    assert step(core, SessionClosed(3, 1000, "s1")) == []
    assert {core.leases[lid(n)].session_id for n in (1, 2)} == {None}
    assert step(core, Tick(4, 1000 + GRACE - 1)) == []  # still within the grace
    effects = step(core, hello(5, 1500, "s2", slots=2, held=[lid(1)]))
    assert effects == [
        fx.TaskChanged(5, "t1"),  # lid(2) was not listed: back to the queue at once
        fx.Send(5, "s2", Welcome("s2", HB, LEASE, [lid(1)], [])),
        assign(5, "s2", lid(3), 1),  # chunk 1 came back through the queue
        fx.TaskChanged(5, "t1"),
    ]
    assert core.leases[lid(1)].session_id == "s2"
    assert core.sessions["s2"].leases == {lid(1), lid(3)}
    assert step(core, Tick(6, 1000 + GRACE + 10)) == []  # resumed leases do not expire
    assert of(step(core, result(7, 2600, "s2", lid(1))), fx.PersistResult) != []


def test_orphaned_leases_are_requeued_at_the_tick_after_the_grace(core: Core) -> None:
    step(core, submit(1, 0, items=4))
    step(core, hello(2, 0, "s1", "w1", slots=2))
    step(core, hello(3, 0, "s2", "w2", slots=2))
    step(core, SessionClosed(4, 500, "s1"))
    step(core, HeartbeatIn(5, 1400, "s2"))
    assert step(core, Tick(6, 500 + GRACE - 1)) == []
    effects = step(core, Tick(7, 500 + GRACE))
    assert assigns(effects) == [("s2", "t1", 0), ("s2", "t1", 1)]
    assert of(effects, fx.PersistFailure) == []
    # the worker comes back too late: its leases are dropped
    assert step(core, hello(8, 1600, "s3", "w1", held=[lid(1), lid(2)])) == [
        fx.Send(8, "s3", Welcome("s3", HB, LEASE, [], [lid(1), lid(2)])),
    ]


def test_hello_listing_unknown_leases_drops_them(core: Core) -> None:
    step(core, submit(1, 0, items=2))
    step(core, hello(2, 0, "s1", "w1"))
    step(core, result(3, 10, "s1", lid(1)))
    step(core, SessionClosed(4, 20, "s1"))
    step(core, submit(5, 30, "t2", items=2))
    step(core, hello(6, 35, "s9", "w9"))  # holds t2's chunk as lid(2)
    effects = step(core, hello(7, 40, "s2", "w1", held=[777, lid(1), lid(5, epoch=9), lid(2)]))
    # unknown and foreign leases are dropped; the accepted one is in neither list
    assert sent(effects) == [("s2", Welcome("s2", HB, LEASE, [], [777, lid(5, epoch=9), lid(2)]))]
    assert core.leases[lid(2)].session_id == "s9"


def test_new_hello_of_the_same_worker_replaces_the_old_session(core: Core) -> None:
    step(core, submit(1, 0, items=4))
    step(core, hello(2, 0, "s1", "w1", slots=2))
    effects = step(core, hello(3, 100, "s2", "w1", slots=2, held=[lid(1), lid(2)]))
    assert effects == [
        fx.CloseSession(3, "s1", 4000, "replaced by a newer session of the same worker"),
        fx.Send(3, "s2", Welcome("s2", HB, LEASE, [lid(1), lid(2)], [])),
    ]
    assert set(core.sessions) == {"s2"} and core.session_of_worker[f"{ACCT}/w1"] == "s2"
    assert step(core, result(4, 110, "s1", lid(1))) == []  # the old session is gone
    assert step(core, SessionClosed(5, 120, "s1")) == []  # its late close changes nothing
    assert core.leases[lid(1)].session_id == "s2"
    assert of(step(core, result(6, 130, "s2", lid(1))), fx.PersistResult) != []


def test_resume_never_exceeds_the_new_sessions_capacity(core: Core) -> None:
    """Regression: a hello with fewer slots than held leases resumed them all."""
    step(core, submit(1, 0, items=6))
    step(core, hello(2, 0, "s1", slots=3))
    step(core, SessionClosed(3, 10, "s1"))
    effects = step(core, hello(4, 20, "s2", slots=1, prefetch=1, held=[lid(1), lid(2), lid(3)]))
    assert effects[-1] == fx.Send(4, "s2", Welcome("s2", HB, LEASE, [lid(1), lid(2)], [lid(3)]))
    assert core.sessions["s2"].leases == {lid(1), lid(2)}
    assert core.tasks["t1"].requeue == deque([2])  # the one it had no room for is requeued


def test_lease_listed_twice_in_hello_is_resumed_not_dropped(core: Core) -> None:
    """Regression: the second mention reported the just-resumed lease as dropped."""
    step(core, submit(1, 0, items=2))
    step(core, hello(2, 0, "s1"))
    step(core, SessionClosed(3, 10, "s1"))
    effects = step(core, hello(4, 20, "s2", held=[lid(1), lid(1)]))
    assert sent(effects) == [("s2", Welcome("s2", HB, LEASE, [lid(1)], []))]


# ---- prefetch -------------------------------------------------------------------------------


def test_prefetch_leases_beyond_the_slots(core: Core) -> None:
    step(core, submit(1, 0, items=12))
    effects = step(core, hello(2, 0, "s1", slots=2, prefetch=1))
    assert assigns(effects) == [("s1", "t1", 0), ("s1", "t1", 1), ("s1", "t1", 2)]
    assert core.sessions["s1"].free == 0
    assert assigns(step(core, result(3, 10, "s1", lid(1)))) == [("s1", "t1", 3)]


def test_prefetched_chunk_is_not_revoked_while_within_its_own_timeout(core: Core) -> None:
    step(core, submit(1, 0, items=4, chunk_size=1, chunk_timeout_ms=10_000))
    step(core, hello(2, 0, "s1", slots=1, prefetch=1))  # chunk 0 runs, chunk 1 waits
    for i, at in enumerate((2000, 4000, 6000, 8000)):
        step(core, HeartbeatIn(3 + i, at, "s1"))
    step(core, result(10, 9000, "s1", lid(1), 1))  # 9 s of its 10 s: chunk 1 starts now
    step(core, HeartbeatIn(11, 11_000, "s1"))
    step(core, HeartbeatIn(12, 13_000, "s1"))
    # chunk 1 may run until 19 s on the worker's own clock; 13.5 s is 3.5 s after it began
    effects = step(core, Tick(13, 10_000 + LEASE))
    assert [m for _, m in sent(effects) if isinstance(m, Revoke)] == []
    assert core.tasks["t1"].failures == {}


# ---- cancel and deadlines -----------------------------------------------------------------


def test_cancel_revokes_leases_and_later_results_are_rejected(core: Core) -> None:
    step(core, submit(1, 0, items=6))
    step(core, hello(2, 0, "s1", "w1", slots=2))
    step(core, hello(3, 0, "s2", "w2", slots=2))  # gets chunk 2; then w2 disconnects
    step(core, SessionClosed(4, 5, "s2"))
    effects = step(core, TaskCancel(5, 10, "t1", "changed my mind"))
    assert effects == [
        fx.Send(5, "s1", Revoke(lid(1), "changed my mind")), fx.TaskChanged(5, "t1"),
        fx.Send(5, "s1", Revoke(lid(2), "changed my mind")), fx.TaskChanged(5, "t1"),
        fx.TaskChanged(5, "t1"),  # the orphaned lease is dropped without a message
        fx.PersistTaskState(5, "t1", "cancelled", 10), fx.TaskChanged(5, "t1"),
        fx.Reply(5, ok=True),
    ]
    task = core.tasks["t1"]
    assert (task.state, task.leased, task.pending, len(core.leases)) == (
        TaskState.CANCELLED, 0, 3, 0,
    )
    effects = step(core, result(6, 20, "s1", lid(1)))
    assert of(effects, fx.PersistResult) == []
    assert [type(m) for _, m in sent(effects)] == [Rejected]
    assert step(core, hello(7, 30, "s3", "w2", held=[lid(3)])) == [
        fx.Send(7, "s3", Welcome("s3", HB, LEASE, [], [lid(3)])),
    ]
    assert step(core, TaskCancel(8, 40, "t1")) == [fx.Reply(
        8, ok=False, error="task is already cancelled; nothing to cancel", status=409,
    )]
    assert step(core, TaskCancel(9, 40, "nope")) == [
        fx.Reply(9, ok=False, error="no such task", status=404),
    ]
    assert assigns(step(core, Tick(10, 100))) == []


def test_chunk_deadline_on_tick_revokes_and_counts_a_failure(core: Core) -> None:
    step(core, submit(1, 0, items=2, chunk_timeout_ms=1000, max_attempts=2))
    step(core, hello(2, 0, "s1"))
    deadline = 1000 + LEASE
    step(core, HeartbeatIn(3, 2000, "s1"))
    step(core, HeartbeatIn(4, 4000, "s1"))
    assert step(core, Tick(5, deadline - 1)) == []
    error = "the chunk ran past its deadline on the worker"
    assert step(core, Tick(6, deadline)) == [
        fx.Send(6, "s1", Revoke(lid(1), "chunk deadline passed")),
        fx.PersistFailure(6, "t1", 0, lid(1), ACCT, "w1", error, False, deadline),
        fx.TaskChanged(6, "t1"),
        assign(6, "s1", lid(2), 0, attempt=2, timeout=1000),
        fx.TaskChanged(6, "t1"),
    ]
    assert step(core, result(7, deadline + 1, "s1", lid(1)))[0] == fx.Send(7, "s1", Rejected(
        lid(1), "lease is unknown, expired or revoked; its chunk went back to the queue",
    ))
    step(core, HeartbeatIn(8, 6000, "s1"))
    step(core, HeartbeatIn(9, 8000, "s1"))
    effects = step(core, Tick(10, 2 * deadline))
    assert of(effects, fx.PersistTaskState) == [
        fx.PersistTaskState(10, "t1", "failed", 2 * deadline)
    ]


# ---- restart --------------------------------------------------------------------------------


def stored_task(task_id: str = "t1", items: int = 9, chunk_size: int = 2) -> Task:
    return Task(
        id=task_id, owner="alice", name="n", chunks_total=-(-items // chunk_size),
        items_total=items, chunk_size=chunk_size, max_concurrency=100, max_attempts=3,
        chunk_timeout_ms=60_000, requirements=[], code_ref=f"code-{task_id}", created_ms=0,
    )


def test_restart_lease_ids_never_repeat_and_restore_rebuilds_counters() -> None:
    old = Core(CFG, epoch=1)
    step(old, submit(1, 0, items=9))
    step(old, hello(2, 0, "s1", slots=3))
    old_ids = set(old.leases)
    step(old, result(3, 10, "s1", lid(1)))
    old_ids |= set(old.leases)
    assert old_ids == {lid(n) for n in range(1, 5)}

    new = Core(CFG, epoch=2)
    new.restore_task(stored_task(), done=[(0, 2), (2, 2)], failed={1: "boom"},
                     failures={1: 3, 3: 1})
    new.restore_accepted([(lid(1), f"{ACCT}/w1")])
    check_invariants(new)
    task = new.tasks["t1"]
    assert (task.done, task.failed, task.leased, task.pending, task.items_done) == (2, 1, 0, 2, 4)
    assert task.last_error == {1: "boom"} and list(task.requeue) == []
    effects = step(new, hello(10, 1000, "s1", slots=5, held=[lid(2), lid(3), lid(4), lid(1)]))
    assert effects[0] == fx.Send(10, "s1", Welcome(
        "s1", HB, LEASE, [], [lid(2), lid(3), lid(4)],  # old leases dropped; lid(1) accepted
    ))
    assert effects[1:] == [
        assign(10, "s1", lid(1, epoch=2), 3, attempt=2), fx.TaskChanged(10, "t1"),
        assign(10, "s1", lid(2, epoch=2), 4), fx.TaskChanged(10, "t1"),
    ]
    assert not old_ids & set(new.leases)
    assert step(new, result(11, 1010, "s1", lid(1))) == [fx.Send(11, "s1", Accepted(lid(1)))]
    assert step(new, result(12, 1020, "s1", lid(3))) == [fx.Send(12, "s1", Rejected(
        lid(3), "lease is unknown, expired or revoked; its chunk went back to the queue",
    ))]
    step(new, result(13, 1030, "s1", lid(1, epoch=2)))
    effects = step(new, result(14, 1040, "s1", lid(2, epoch=2), 1))
    assert of(effects, fx.PersistTaskState) == [fx.PersistTaskState(14, "t1", "failed", 1040)]
    assert (task.done, task.failed, task.items_done) == (4, 1, 7)


def test_lease_ids_never_leave_their_epoch_and_a_new_epoch_continues() -> None:
    """Regression: the counter was ORed in unbounded, so after 2**32 leases ids repeated
    (odd epochs) or entered the next epoch's range (even ones)."""
    core = Core(CFG, epoch=1)
    first = core.new_lease_id()
    core._next_id = 2**32 - 3  # as if 4,294,967,293 leases had been granted
    assert core.lease_ids_left == 2
    last = core.new_lease_id()
    assert (first, last) == (lid(1), lid(2**32 - 2))
    core.new_lease_id()
    with pytest.raises(AssertionError):  # never wraps into another epoch's ids
        core.new_lease_id()
    core = Core(CFG, epoch=1)
    step(core, submit(1, 0, items=4))
    step(core, hello(2, 0, "s1"))
    assert step(core, EpochStarted(3, 10, 5)) == []
    effects = step(core, result(4, 20, "s1", lid(1)))  # a lease of the old epoch still works
    assert assign_effects(effects)[0].lease_id == lid(1, epoch=5)
    with pytest.raises(AssertionError):
        core.handle(EpochStarted(5, 30, 5))


def test_restored_terminal_task_is_not_scheduled() -> None:
    core = Core(CFG, epoch=3)
    task = stored_task()
    task.state, task.finished_ms = TaskState.CANCELLED, 5
    core.restore_task(task, done=[(0, 2)], failed={}, failures={})
    check_invariants(core)
    assert assigns(step(core, hello(1, 10, "s1", slots=4))) == []
