"""Unit tests of the pure core, from events built by hand (eid and at_ms written out).

Every event goes through ``step``, which also checks the core's invariants afterwards.
Defaults: heartbeat 2000 ms, lease 3500 ms, disconnect grace 1000 ms, epoch 1.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Sequence

import msgspec
import pytest

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import (
    EpochStarted,
    Event,
    FailIn,
    HeartbeatIn,
    ProgressIn,
    ResultIn,
    SessionClosed,
    SessionHello,
    TaskCancel,
    TaskSubmitted,
    Tick,
)
from coordinator.core.invariants import check_invariants
from coordinator.core.lifecycle import ChunkState, TaskState
from coordinator.core.state import Task
from schema.worker import PROTOCOL_VERSION, Accepted, Error, Rejected, Revoke, Welcome

CFG = CoreConfig()
HB, LEASE, GRACE = CFG.heartbeat_ms, CFG.lease_ms, CFG.disconnect_grace_ms
ACCT = "acme"


def lid(n: int, epoch: int = 1) -> int:
    """The n-th lease id drawn by a core booted with ``epoch``."""
    return (epoch << 32) | n


def submit(
    eid: int, at: int, task_id: str = "t1", *, items: int = 8, chunk_size: int = 2,
    max_concurrency: int = 100, max_attempts: int = 3, chunk_timeout_ms: int = 60_000,
    requirements: Sequence[str] = (),
) -> TaskSubmitted:
    chunks = -(-items // chunk_size)
    return TaskSubmitted(
        eid, at, task_id, "alice", f"name of {task_id}", chunks, items, chunk_size,
        max_concurrency, max_attempts, chunk_timeout_ms, list(requirements), f"code-{task_id}",
    )


def hello(
    eid: int, at: int, session_id: str, worker_id: str = "w1", *, slots: int = 1,
    held: Sequence[int] = (), caps: Sequence[str] = (), protocol: int = PROTOCOL_VERSION,
    prefetch: int = 0,
) -> SessionHello:
    return SessionHello(
        eid, at, session_id, ACCT, worker_id, list(caps), slots, list(held), protocol,
        prefetch=prefetch,
    )


def out(n: int) -> bytes:
    return msgspec.msgpack.encode(list(range(n)))


def result(eid: int, at: int, session_id: str, lease_id: int, n: int = 2) -> ResultIn:
    return ResultIn(eid, at, session_id, lease_id, out(n), f"digest-{lease_id}")


def step(core: Core, event: Event) -> list[fx.Effect]:
    effects = core.handle(event)
    check_invariants(core)
    for e in effects:
        assert e.cause == event.eid, f"{e!r} does not repeat its cause {event.eid}"
    return effects


def assign(
    eid: int, session_id: str, lease: int, chunk: int, task_id: str = "t1", *,
    attempt: int = 1, timeout: int = 60_000,
) -> fx.AssignChunk:
    return fx.AssignChunk(
        eid, session_id, lease, task_id, chunk, f"code-{task_id}", timeout, attempt,
    )


def assigns(effects: list[fx.Effect]) -> list[tuple[str, str, int]]:
    """(session, task, chunk) of every assignment, in order."""
    return [
        (e.session_id, e.task_id, e.chunk_index) for e in effects if isinstance(e, fx.AssignChunk)
    ]


def assign_effects(effects: list[fx.Effect]) -> list[fx.AssignChunk]:
    return [e for e in effects if isinstance(e, fx.AssignChunk)]


def of(effects: list[fx.Effect], kind: type[fx.Effect]) -> list[fx.Effect]:
    return [e for e in effects if isinstance(e, kind)]


def sent(effects: list[fx.Effect]) -> list[tuple[str, object]]:
    return [(e.session_id, e.message) for e in effects if isinstance(e, fx.Send)]


def lease_of(core: Core, task_id: str, chunk: int) -> int:
    return core.tasks[task_id].lease_of_chunk[chunk]


@pytest.fixture
def core() -> Core:
    return Core(CFG, epoch=1)


# ---- sessions and assignment ----------------------------------------------------------


def test_submit_persists_replies_and_assigns_nothing_without_workers(core: Core) -> None:
    assert step(core, submit(1, 0, items=9)) == [
        fx.PersistTask(1, "t1", "alice", "name of t1", 5, 9, 2, 100, 3, 60_000, [], "code-t1", 0),
        fx.Reply(1, ok=True),
        fx.TaskChanged(1, "t1"),
    ]
    task = core.tasks["t1"]
    assert (task.state, task.pending, task.cursor) == (TaskState.RUNNING, 5, 0)
    assert step(core, submit(2, 5, items=3)) == [
        fx.Reply(2, ok=False, error="task id already exists", status=409),
    ]


def test_hello_welcomes_and_assigns_up_to_slots(core: Core) -> None:
    step(core, submit(1, 0, items=10))
    assert step(core, hello(2, 100, "s1", slots=3)) == [
        fx.Send(2, "s1", Welcome("s1", HB, LEASE, [], [])),
        assign(2, "s1", lid(1), 0), fx.TaskChanged(2, "t1"),
        assign(2, "s1", lid(2), 1), fx.TaskChanged(2, "t1"),
        assign(2, "s1", lid(3), 2), fx.TaskChanged(2, "t1"),
    ]
    task = core.tasks["t1"]
    assert (task.leased, task.pending, task.cursor) == (3, 2, 3)
    assert core.sessions["s1"].leases == {lid(1), lid(2), lid(3)}
    # a session with no free slot gets nothing more, even on a tick
    assert assigns(step(core, Tick(3, 200))) == []


def test_task_submitted_after_hello_fills_free_slots(core: Core) -> None:
    step(core, hello(1, 0, "s1", slots=2))
    effects = step(core, submit(2, 10, items=6))
    assert assigns(effects) == [("s1", "t1", 0), ("s1", "t1", 1)]
    assert of(effects, fx.Reply) == [fx.Reply(2, ok=True)]


def test_result_persists_then_accepts_then_assigns_next_in_same_turn(core: Core) -> None:
    step(core, submit(1, 0, items=9))  # 5 chunks; the last holds one item
    step(core, hello(2, 0, "s1", slots=1))
    step(core, ProgressIn(3, 50, "s1", lid(1), 1, 2))
    assert core.leases[lid(1)].done == 1
    effects = step(core, result(4, 100, "s1", lid(1)))
    assert effects == [
        fx.PersistResult(4, "t1", 0, lid(1), ACCT, "w1", out(2), f"digest-{lid(1)}", 2, 100),
        fx.TaskChanged(4, "t1"),
        fx.Send(4, "s1", Accepted(lid(1))),
        assign(4, "s1", lid(2), 1),
        fx.TaskChanged(4, "t1"),
    ]
    task = core.tasks["t1"]
    assert (task.done, task.items_done, task.chunk_state[0]) == (1, 2, ChunkState.DONE)
    # run the task to the end: the last chunk has one item, and the task completes
    eid = 5
    for n in range(2, 6):
        effects = step(core, result(eid, 100 + eid, "s1", lid(n), 1 if n == 5 else 2))
        eid += 1
    assert of(effects, fx.PersistTaskState) == [
        fx.PersistTaskState(eid - 1, "t1", "completed", 100 + eid - 1)
    ]
    assert (task.state, task.done, task.items_done, task.finished_ms) == (
        TaskState.COMPLETED, 5, 9, 100 + 8,
    )
    assert assigns(effects) == []


def test_resent_result_is_accepted_again_without_a_second_persist(core: Core) -> None:
    step(core, submit(1, 0, items=2))
    step(core, hello(2, 0, "s1"))
    first = step(core, result(3, 100, "s1", lid(1)))
    assert len(of(first, fx.PersistResult)) == 1
    assert step(core, result(4, 110, "s1", lid(1))) == [fx.Send(4, "s1", Accepted(lid(1)))]
    # also after a reconnect of the same worker under a new session
    step(core, SessionClosed(5, 120, "s1"))
    welcome = step(core, hello(6, 130, "s2", held=[lid(1)]))
    assert welcome == [fx.Send(6, "s2", Welcome("s2", HB, LEASE, [], []))]  # neither list
    assert step(core, result(7, 140, "s2", lid(1))) == [fx.Send(7, "s2", Accepted(lid(1)))]
    # another worker re-sending it is fenced off
    step(core, hello(8, 150, "s3", "w2"))
    assert step(core, result(9, 160, "s3", lid(1))) == [
        fx.Send(9, "s3", Rejected(
            lid(1), "lease is unknown, expired or revoked; its chunk went back to the queue",
        )),
    ]


def test_result_on_a_foreign_sessions_lease_is_rejected(core: Core) -> None:
    step(core, submit(1, 0, items=2))
    step(core, hello(2, 0, "s1", "w1"))
    step(core, hello(3, 0, "s2", "w2"))
    assert step(core, result(4, 100, "s2", lid(1))) == [
        fx.Send(4, "s2", Rejected(lid(1), "lease belongs to another session")),
    ]
    assert step(core, FailIn(5, 100, "s2", lid(1), "sabotage", False)) == [
        fx.Send(5, "s2", Rejected(lid(1), "lease belongs to another session")),
    ]
    assert step(core, ProgressIn(6, 100, "s2", lid(1), 2, 2)) == []
    assert core.leases[lid(1)].session_id == "s1"
    assert core.tasks["t1"].failures == {}
    assert of(step(core, result(7, 110, "s1", lid(1))), fx.PersistResult) != []


def test_result_from_unknown_session_or_for_unknown_lease(core: Core) -> None:
    step(core, submit(1, 0, items=2))
    step(core, hello(2, 0, "s1"))
    assert step(core, result(3, 10, "ghost", lid(1))) == []  # no session: nobody to answer
    assert step(core, result(4, 10, "s1", lid(99))) == [
        fx.Send(4, "s1", Rejected(
            lid(99), "lease is unknown, expired or revoked; its chunk went back to the queue",
        )),
    ]


@pytest.mark.parametrize(
    ("output", "detail"),
    [(out(3), "3 outputs"), (out(1), "1 outputs"), (b"\x01", "not a MessagePack array"),
     (b"", "not a MessagePack array")],
)
def test_result_with_wrong_item_count_fails_the_chunk(
    core: Core, output: bytes, detail: str
) -> None:
    step(core, submit(1, 0, items=2, max_attempts=3))  # one chunk of two items
    step(core, hello(2, 0, "s1"))
    effects = step(core, ResultIn(3, 100, "s1", lid(1), output, "d"))
    error = f"result has {detail} for 2 items; a result needs one output per item"
    assert effects == [
        fx.PersistFailure(3, "t1", 0, lid(1), ACCT, "w1", error, True, 100),
        fx.TaskChanged(3, "t1"),
        fx.PersistTaskState(3, "t1", "failed", 100),
        fx.TaskChanged(3, "t1"),
        fx.Send(3, "s1", Rejected(lid(1), "result does not match the chunk")),
    ]
    task = core.tasks["t1"]
    assert (task.state, task.failed, task.last_error[0]) == (TaskState.FAILED, 1, error)


def test_wrong_item_count_still_pushes_the_next_assign_in_the_same_turn(core: Core) -> None:
    """Regression: the refill after a rejected result used to wait for the next tick."""
    step(core, submit(1, 0, items=6))
    step(core, hello(2, 0, "s1"))
    effects = step(core, ResultIn(3, 100, "s1", lid(1), out(5), "d"))
    assert [type(m) for _, m in sent(effects)] == [Rejected]
    assert assigns(effects) == [("s1", "t1", 1)]


# ---- failures and retries ---------------------------------------------------------------


def test_fail_retries_on_a_different_worker(core: Core) -> None:
    step(core, submit(1, 0, items=2, max_attempts=3))
    step(core, hello(2, 0, "s1", "w1"))
    step(core, hello(3, 0, "s2", "w2"))  # free, but the only chunk is taken
    effects = step(core, FailIn(4, 100, "s1", lid(1), "boom", True))
    assert effects == [
        fx.PersistFailure(4, "t1", 0, lid(1), ACCT, "w1", "boom", False, 100),
        fx.TaskChanged(4, "t1"),
    ]  # not straight back to w1, which just failed it
    assert step(core, Tick(5, 200)) == [
        assign(5, "s2", lid(2), 0, attempt=2), fx.TaskChanged(5, "t1"),
    ]
    step(core, result(6, 300, "s2", lid(2)))
    assert core.tasks["t1"].state is TaskState.COMPLETED


def test_fail_up_to_max_attempts_then_the_chunk_and_task_fail(core: Core) -> None:
    step(core, submit(1, 0, items=4, max_attempts=3))  # two chunks
    step(core, hello(2, 0, "s1", slots=1))  # the only worker: retries come back to it
    effects = step(core, FailIn(3, 10, "s1", lid(1), "boom 1", True))
    assert effects == [
        fx.PersistFailure(3, "t1", 0, lid(1), ACCT, "w1", "boom 1", False, 10),
        fx.TaskChanged(3, "t1"),
        assign(3, "s1", lid(2), 0, attempt=2),
        fx.TaskChanged(3, "t1"),
    ]
    effects = step(core, FailIn(4, 20, "s1", lid(2), "boom 2", True))
    assert effects[-2] == assign(4, "s1", lid(3), 0, attempt=3)
    effects = step(core, FailIn(5, 30, "s1", lid(3), "boom 3", True))
    assert effects[:2] == [
        fx.PersistFailure(5, "t1", 0, lid(3), ACCT, "w1", "boom 3", True, 30),
        fx.TaskChanged(5, "t1"),
    ]
    assert assigns(effects) == [("s1", "t1", 1)]  # the chunk is failed for good; move on
    task = core.tasks["t1"]
    assert (task.state, task.failed, task.failures, task.last_error) == (
        TaskState.RUNNING, 1, {0: 3}, {0: "boom 3"},
    )
    effects = step(core, result(6, 40, "s1", lid(4)))
    assert of(effects, fx.PersistTaskState) == [fx.PersistTaskState(6, "t1", "failed", 40)]
    assert (task.state, task.done, task.failed) == (TaskState.FAILED, 1, 1)


def test_non_retryable_fail_is_final_at_once(core: Core) -> None:
    step(core, submit(1, 0, items=2, max_attempts=5))
    step(core, hello(2, 0, "s1"))
    effects = step(core, FailIn(3, 10, "s1", lid(1), "bad input", False))
    assert of(effects, fx.PersistFailure) == [
        fx.PersistFailure(3, "t1", 0, lid(1), ACCT, "w1", "bad input", True, 10),
    ]
    assert core.tasks["t1"].state is TaskState.FAILED


def test_chunk_failed_once_on_every_worker_is_still_retried(core: Core) -> None:
    """Regression: each of two workers that had failed a chunk deferred it to the other,
    so it was never leased again (scheduling.py, _someone_else before _someone_fresh)."""
    step(core, submit(1, 0, items=2, max_attempts=3))
    step(core, hello(2, 0, "s1", "w1"))
    step(core, hello(3, 0, "s2", "w2"))
    step(core, FailIn(4, 10, "s1", lid(1), "flaky", True))
    assert assigns(step(core, Tick(5, 250))) == [("s2", "t1", 0)]
    effects = step(core, FailIn(6, 300, "s2", lid(2), "flaky", True))
    # attempt 3 of 3 is due and nobody fresh is left: a worker that failed it retries it
    effects += step(core, Tick(7, 500)) + step(core, Tick(8, 750))
    assert [(t, c) for _, t, c in assigns(effects)] == [("t1", 0)]
    assert assign_effects(effects)[0].attempt == 3


def test_failed_chunk_waits_for_a_fresh_worker_while_one_is_there(core: Core) -> None:
    step(core, submit(1, 0, items=2, max_attempts=3))
    step(core, hello(2, 0, "s1", "w1"))
    step(core, submit(3, 0, "long", items=2))
    step(core, hello(4, 0, "s2", "w2"))  # busy with the other task
    effects = step(core, FailIn(5, 10, "s1", lid(1), "flaky", True))
    assert assigns(effects) == []  # w2 has not failed it: w1 leaves it for w2
    effects = step(core, result(6, 20, "s2", lid(2)))
    assert assigns(effects) == [("s2", "t1", 0)]


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


# ---- concurrency caps, capabilities, fairness -------------------------------------------


def test_max_concurrency_is_never_exceeded_with_many_free_slots(core: Core) -> None:
    step(core, submit(1, 0, items=40, max_concurrency=3))
    total = 0
    for i in range(3):
        total += len(assigns(step(core, hello(2 + i, 0, f"s{i}", f"w{i}", slots=4))))
    assert total == 3 and core.tasks["t1"].leased == 3
    assert assigns(step(core, Tick(10, 100))) == []
    holder = core.leases[lid(1)].session_id
    assert holder is not None
    effects = step(core, result(11, 200, holder, lid(1)))
    assert assigns(effects) == [(holder, "t1", 3)]
    assert core.tasks["t1"].leased == 3


def test_capabilities_are_respected(core: Core) -> None:
    step(core, submit(1, 0, "gpu-task", items=8, requirements=["gpu", "mem_gb>=8"]))
    step(core, submit(2, 0, "cpu-task", items=16))
    effects = step(core, hello(3, 0, "s1", "cpu", slots=3, caps=["mem_gb=64"]))
    assert assigns(effects) == [("s1", "cpu-task", 0), ("s1", "cpu-task", 1),
                                ("s1", "cpu-task", 2)]
    effects = step(core, hello(4, 0, "s2", "gpu", slots=2, caps=["gpu", "mem_gb=16"]))
    # fair share within one customer: gpu-task has fewer chunks in flight, so both go to it
    assert assigns(effects) == [("s2", "gpu-task", 0), ("s2", "gpu-task", 1)]
    # the cpu worker keeps freeing slots: it never gets a chunk of the gpu task
    eid, seen = 5, []
    while core.sessions["s1"].leases:
        lease = min(core.sessions["s1"].leases)
        seen += assigns(step(core, result(eid, eid * 10, "s1", lease)))
        eid += 1
    assert {t for _, t, _ in seen} == {"cpu-task"} and len(seen) == 5
    assert core.tasks["gpu-task"].pending == 2
    assert assigns(step(core, Tick(eid, 1000))) == []


def test_round_robin_spreads_slots_across_tasks(core: Core) -> None:
    step(core, submit(1, 0, "a", items=8))
    step(core, submit(2, 0, "b", items=8))
    effects = step(core, hello(3, 0, "s1", slots=4))
    assert assigns(effects) == [("s1", "a", 0), ("s1", "b", 0), ("s1", "a", 1), ("s1", "b", 1)]
    step(core, hello(4, 0, "s2", "w2", slots=3))
    leased = {t: core.tasks[t].leased for t in ("a", "b")}
    assert leased == {"a": 4, "b": 3}


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


# ---- bad peers ----------------------------------------------------------------------------


def test_protocol_mismatch_is_a_fatal_error_and_a_policy_close(core: Core) -> None:
    step(core, submit(1, 0, items=2))
    effects = step(core, hello(2, 0, "s1", protocol=PROTOCOL_VERSION + 1))
    assert len(effects) == 2
    (session_id, error), close = sent(effects)[0], effects[1]
    assert session_id == "s1" and isinstance(error, Error) and error.fatal
    assert f"protocol {PROTOCOL_VERSION + 1} is not supported" in error.reason
    assert close == fx.CloseSession(2, "s1", 1008, "protocol mismatch")
    assert core.sessions == {} and core.leases == {}


def test_malformed_capability_is_a_fatal_error_and_a_policy_close(core: Core) -> None:
    effects = step(core, hello(1, 0, "s1", caps=["gpu", "has space=1"]))
    assert effects[1] == fx.CloseSession(1, "s1", 1008, "bad capability")
    message = effects[0].message if isinstance(effects[0], fx.Send) else None
    assert isinstance(message, Error) and message.fatal and "has space=1" in message.reason
    assert core.sessions == {}


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


# ---- scale ------------------------------------------------------------------------------


def test_million_chunk_task_is_handled_fast_and_small() -> None:
    core = Core(CFG, epoch=1)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        effects = core.handle(submit(1, 0, items=1_000_000, chunk_size=1))
        submitted = time.perf_counter() - start
        effects += core.handle(hello(2, 0, "s1", slots=8))
        effects += core.handle(result(3, 10, "s1", lid(1), 1))
        effects += core.handle(Tick(4, 20))
        handled = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    start = time.perf_counter()
    check_invariants(core)
    checked = time.perf_counter() - start
    print(
        f"\n1,000,000-chunk task: submit {submitted * 1e3:.1f} ms, submit+hello+result+tick "
        f"{handled * 1e3:.1f} ms, check_invariants {checked * 1e3:.1f} ms, "
        f"peak traced memory {peak / 1e6:.2f} MB"
    )
    task = core.tasks["t1"]
    assert len(task.chunk_state) == 1_000_000
    assert len(task.requeue) == 0
    assert (task.leased, task.done, task.cursor) == (8, 1, 9)
    assert len(assigns(effects)) == 9
    # one byte per chunk; a Python object per chunk would cost tens of MB
    assert peak < 4_000_000, f"peak {peak} bytes: per-chunk objects?"


# ---- the invariant checker itself ---------------------------------------------------------


def _busy_core() -> Core:
    core = Core(CFG, epoch=1)
    step(core, submit(1, 0, "t1", items=12, max_concurrency=3))
    step(core, submit(2, 0, "t2", items=2))
    step(core, hello(3, 0, "s1", "w1", slots=2))  # t1/0 as lid(1), t2/0 as lid(2)
    step(core, hello(4, 0, "s2", "w2", slots=2))  # t1/1 and t1/2: t1 is at its cap
    step(core, result(5, 10, "s1", lid(2)))  # t2 is complete
    step(core, FailIn(6, 20, "s1", lid(1), "boom", True))  # t1/0 waits for w2; s1 takes t1/3
    task = core.tasks["t1"]
    assert (list(task.requeue), task.leased, core.tasks["t2"].state) == (
        [0], 3, TaskState.COMPLETED,
    )
    return core


def _corrupt_lease_session(core: Core) -> None:
    core.leases[min(core.sessions["s1"].leases)].session_id = "s2"


def _second_lease_for_a_chunk(core: Core) -> None:
    core.leases[999] = dataclasses.replace(core.leases[min(core.leases)], id=999)


def _orphan_not_indexed(core: Core) -> None:
    core.handle(SessionClosed(99, 30, "s2"))
    check_invariants(core)
    core.orphans.clear()


CORRUPTIONS: dict[str, Callable[[Core], object]] = {
    "done counter": lambda c: setattr(c.tasks["t1"], "done", c.tasks["t1"].done + 1),
    "chunk byte": lambda c: c.tasks["t1"].chunk_state.__setitem__(5, ChunkState.DONE),
    "bad byte": lambda c: c.tasks["t1"].chunk_state.__setitem__(5, 7),
    "lease to pending chunk": lambda c: c.tasks["t1"].chunk_state.__setitem__(
        c.leases[min(c.leases)].chunk, ChunkState.PENDING),
    "slots exceeded": lambda c: setattr(c.sessions["s2"], "slots", 0),
    "lease in two sessions": lambda c: c.sessions["s2"].leases.update(c.sessions["s1"].leases),
    "lease session mismatch": _corrupt_lease_session,
    "second lease for a chunk": _second_lease_for_a_chunk,
    "requeue duplicate": lambda c: c.tasks["t1"].requeue.append(c.tasks["t1"].requeue[0]),
    "requeue past cursor": lambda c: c.tasks["t1"].requeue.append(c.tasks["t1"].cursor + 1),
    "requeue lost": lambda c: c.tasks["t1"].requeue.clear(),
    "concurrency cap": lambda c: setattr(c.tasks["t1"], "max_concurrency", 1),
    "terminal with leases": lambda c: setattr(c.tasks["t1"], "state", TaskState.CANCELLED),
    "finished but running": lambda c: setattr(c.tasks["t2"], "state", TaskState.RUNNING),
    "not runnable": lambda c: c.sched.runnable.clear(),
    "orphan of a live worker": lambda c: setattr(c.leases[min(c.leases)], "session_id", None),
    "lease from a later epoch": lambda c: c.leases.__setitem__(
        lid(1, epoch=2), dataclasses.replace(c.leases[min(c.leases)], id=lid(1, epoch=2))),
    "orphan not indexed": _orphan_not_indexed,
    "stale orphan index": lambda c: c.orphans.setdefault(f"{ACCT}/w2", set()).add(lid(3)),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_check_invariants_catches(corrupt: str) -> None:
    core = _busy_core()
    check_invariants(core)
    CORRUPTIONS[corrupt](core)
    with pytest.raises(AssertionError):
        check_invariants(core)


def test_a_task_without_chunks_completes_at_once(core: Core) -> None:
    effects = step(core, submit(1, 0, items=0, chunk_size=1))
    assert core.tasks["t1"].state is TaskState.COMPLETED
    assert any(isinstance(e, fx.PersistTaskState) and e.state == "completed" for e in effects)
