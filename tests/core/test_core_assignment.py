"""Unit tests of the pure core: handing out chunks and taking results back.

Submitting tasks, welcoming sessions and filling their slots, accepting, re-accepting and
rejecting results, failures and retries, concurrency caps, capability requirements and
fair share, and hellos that are refused outright (bad peers).

Events are built by hand (eid and at_ms written out) with the helpers of ``core_steps``;
every event goes through ``step``, which checks the core's invariants afterwards.
"""

from __future__ import annotations

import pytest

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import FailIn, ProgressIn, ResultIn, SessionClosed, Tick
from coordinator.core.lifecycle import ChunkState, TaskState
from schema.worker import PROTOCOL_VERSION, Accepted, Error, Rejected, Welcome
from tests.core.core_steps import (
    ACCT,
    HB,
    LEASE,
    assign,
    assign_effects,
    assigns,
    hello,
    lid,
    of,
    out,
    result,
    sent,
    step,
    submit,
)

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


def test_a_task_without_chunks_completes_at_once(core: Core) -> None:
    effects = step(core, submit(1, 0, items=0, chunk_size=1))
    assert core.tasks["t1"].state is TaskState.COMPLETED
    assert any(isinstance(e, fx.PersistTaskState) and e.state == "completed" for e in effects)


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
