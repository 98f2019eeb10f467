"""The core's own invariants, checked from outside: ``check_invariants(core)``.

Tests and the seeded simulation call it after every event. A broken invariant is our bug,
not a peer's, so it raises ``AssertionError`` naming the task, chunk, lease or session.
A session holds up to ``slots + prefetch`` leases (computed here, not read from
``Session.capacity``, so a wrong property cannot hide a breach).

Pure and cheap: chunk states are counted with ``bytearray.count`` (C speed), everything
else is O(tasks + leases + sessions + queued retries), and messages are only formatted
when an assertion fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.core.ledger import escrow
from coordinator.core.lifecycle import TERMINAL_TASK_STATES, ChunkState, TaskState

if TYPE_CHECKING:
    from coordinator.core.core import Core
    from coordinator.core.state import Lease, Session, Task

_PENDING, _LEASED, _DONE, _FAILED = (int(s) for s in ChunkState)


def check_invariants(core: Core) -> None:
    live_keys = _check_sessions(core)
    leases_of_task: dict[str, int] = {}
    for lease_id, lease in core.leases.items():
        _check_lease(core, lease_id, lease, live_keys)
        leases_of_task[lease.task_id] = leases_of_task.get(lease.task_id, 0) + 1
    for task_id, task in core.tasks.items():
        assert task.id == task_id, f"task stored as {task_id!r} says it is {task.id!r}"
        _check_task(core, task, leases_of_task.get(task_id, 0))
    _check_scheduler(core)
    _check_money(core)
    assert len(core.recent_accepted) <= core.config.recent_accepted_max, (
        f"recent_accepted holds {len(core.recent_accepted)} leases, more than "
        f"recent_accepted_max={core.config.recent_accepted_max}"
    )


def _check_money(core: Core) -> None:
    """Invariant 4: the ledger balances, nothing but the world is negative, and every
    running task's escrow covers the price of the chunks it has in flight."""
    core.treasury.ledger.check_invariants()
    for task in core.tasks.values():
        held = core.treasury.ledger.balance(escrow(task.id))
        if task.state in TERMINAL_TASK_STATES:
            assert held == 0, f"{_task(task)} still holds {held} in escrow"
        else:
            assert held >= task.leased * task.price, (
                f"{_task(task)} escrow {held} does not cover {task.leased} leases at "
                f"{task.price}"
            )


def _task(task: Task) -> str:
    return f"task {task.id!r} ({task.state.label})"


def _lease(lease: Lease) -> str:
    return f"lease {lease.id} (task {lease.task_id!r}, chunk {lease.chunk})"


def _session(session: Session) -> str:
    return f"session {session.id!r} ({session.worker_key})"


def _check_sessions(core: Core) -> set[str]:
    """Sessions, the worker map and the leases each session lists; returns live worker keys."""
    owner: dict[int, str] = {}
    live_keys: set[str] = set()
    for session_id, session in core.sessions.items():
        key = session.worker_key
        assert session.id == session_id, f"{_session(session)} is stored as {session_id!r}"
        assert key not in live_keys, f"worker {key} has two live sessions"
        live_keys.add(key)
        assert core.session_of_worker.get(key) == session_id, (
            f"{_session(session)}: session_of_worker maps the worker to "
            f"{core.session_of_worker.get(key)!r}"
        )
        assert len(session.leases) <= session.slots + session.prefetch, (
            f"{_session(session)} holds {len(session.leases)} leases but has room for "
            f"{session.slots} slots + {session.prefetch} prefetch: {sorted(session.leases)}"
        )
        for lease_id in session.leases:
            assert lease_id not in owner, (
                f"lease {lease_id} is in sessions {owner.get(lease_id)!r} and {session_id!r}"
            )
            owner[lease_id] = session_id
            lease = core.leases.get(lease_id)
            assert lease is not None, (
                f"{_session(session)} lists lease {lease_id}, which does not exist"
            )
            assert lease.session_id == session_id, (
                f"{_session(session)} lists {_lease(lease)}, which says it belongs to "
                f"{lease.session_id!r}"
            )
            assert lease.worker_key == key, (
                f"{_session(session)} holds {_lease(lease)} of worker {lease.worker_key}"
            )
    for key, session_id in core.session_of_worker.items():
        assert session_id in core.sessions, (
            f"session_of_worker maps {key} to {session_id!r}, which is not a live session"
        )
    for lease_id, lease in core.leases.items():
        if lease.session_id is not None:
            assert owner.get(lease_id) == lease.session_id, (
                f"{_lease(lease)} says it belongs to session {lease.session_id!r}, which "
                "does not list it (or does not exist)"
            )
    _check_orphans(core)
    return live_keys


def _check_orphans(core: Core) -> None:
    """``core.orphans`` indexes exactly the leases without a session, by worker."""
    indexed = 0
    for key, lease_ids in core.orphans.items():
        assert lease_ids, f"orphans keeps an empty set for worker {key}"
        for lease_id in lease_ids:
            lease = core.leases.get(lease_id)
            assert lease is not None, f"orphans lists lease {lease_id} of {key}; it is gone"
            assert lease.session_id is None and lease.worker_key == key, (
                f"orphans lists {_lease(lease)} under {key}, but it belongs to session "
                f"{lease.session_id!r} of {lease.worker_key}"
            )
        indexed += len(lease_ids)
    orphaned = sum(1 for lease in core.leases.values() if lease.session_id is None)
    assert indexed == orphaned, (
        f"{orphaned} leases have no session but orphans indexes {indexed}; a hello could "
        "not resume (or drop) the others"
    )


def _check_lease(core: Core, lease_id: int, lease: Lease, live_keys: set[str]) -> None:
    assert lease.id == lease_id, f"{_lease(lease)} is stored as lease {lease_id}"
    assert lease_id >> 32 <= core.epoch, (
        f"{_lease(lease)} is from epoch {lease_id >> 32}, after the core's {core.epoch}"
    )
    task = core.tasks.get(lease.task_id)
    assert task is not None, f"{_lease(lease)} points at a task the core does not know"
    assert 0 <= lease.chunk < task.chunks_total, (
        f"{_lease(lease)}: the chunk is outside 0..{task.chunks_total - 1}"
    )
    state = task.chunk_state[lease.chunk]
    assert state == _LEASED, f"{_lease(lease)}: the chunk is {ChunkState(state).label}"
    assert task.lease_of_chunk.get(lease.chunk) == lease_id, (
        f"{_lease(lease)}: lease_of_chunk maps the chunk to "
        f"lease {task.lease_of_chunk.get(lease.chunk)}"
    )
    if lease.session_id is None:
        assert lease.worker_key not in live_keys, (
            f"{_lease(lease)} is orphaned although its worker {lease.worker_key} has a live "
            "session (its hello should have resumed or dropped it)"
        )


def _check_task(core: Core, task: Task, leases: int) -> None:
    states = task.chunk_state
    total = task.chunks_total
    assert len(states) == total, f"{_task(task)}: {len(states)} chunk states, {total} chunks"
    counts = (
        states.count(_PENDING), states.count(_LEASED), states.count(_DONE), states.count(_FAILED)
    )
    assert sum(counts) == total, f"{_task(task)}: chunk_state holds bytes that are no state"
    kept = (task.pending, task.leased, task.done, task.failed)
    assert kept == counts, (
        f"{_task(task)}: counters pending/leased/done/failed = {kept} but chunk_state "
        f"has {counts}"
    )
    assert task.leased == leases == len(task.lease_of_chunk), (
        f"{_task(task)}: leased={task.leased}, but core.leases holds {leases} of its leases "
        f"and lease_of_chunk {len(task.lease_of_chunk)}"
    )
    for chunk, lease_id in task.lease_of_chunk.items():
        lease = core.leases.get(lease_id)
        assert lease is not None and lease.task_id == task.id and lease.chunk == chunk, (
            f"{_task(task)}: lease_of_chunk maps chunk {chunk} to lease {lease_id}, which is "
            f"{'missing' if lease is None else _lease(lease)}"
        )
    if task.leased > task.max_concurrency:  # only leases from before a lowered cap may
        newer = sorted(x for x in task.lease_of_chunk.values() if x > task.cap_mark)
        assert not newer, (
            f"{_task(task)}: {task.leased} leases exceed max_concurrency="
            f"{task.max_concurrency}, and leases {newer} were granted after it was set"
        )
    assert 0 <= task.cursor <= total, f"{_task(task)}: cursor {task.cursor} outside 0..{total}"
    if task.requeue:
        _check_requeue(task)
    if task.state in TERMINAL_TASK_STATES:
        assert task.leased == 0 and not task.lease_of_chunk, (
            f"{_task(task)} still holds leases {sorted(task.lease_of_chunk.values())}"
        )
        assert not task.requeue, f"{_task(task)} still has chunks queued for retry"
        assert task.finished_ms is not None, f"{_task(task)} has no finished_ms"
    else:
        # every pending chunk is reachable: queued for retry or not yet reached by the cursor
        ahead = states.count(_PENDING, task.cursor)
        assert len(task.requeue) + ahead == task.pending, (
            f"{_task(task)}: {task.pending} pending chunks but only {len(task.requeue)} queued "
            f"for retry and {ahead} past the cursor; the others can never be leased again"
        )
    if task.done + task.failed == total:
        assert task.state is not TaskState.RUNNING, (
            f"{_task(task)}: all {total} chunks are done or failed but the task still runs"
        )
    if task.state is TaskState.COMPLETED:
        assert task.done == total, f"{_task(task)} with only {task.done} of {total} chunks done"
    elif task.state is TaskState.FAILED:
        assert task.failed > 0 and task.done + task.failed == total, (
            f"{_task(task)} with {task.done} done and {task.failed} failed of {total} chunks"
        )


def _check_requeue(task: Task) -> None:
    assert len(task.requeue) == len(set(task.requeue)), (
        f"{_task(task)}: requeue has duplicates: {list(task.requeue)}"
    )
    states = task.chunk_state
    for chunk in task.requeue:
        assert 0 <= chunk < task.cursor, (
            f"{_task(task)}: requeued chunk {chunk} is not below the cursor {task.cursor}"
        )
        assert states[chunk] == _PENDING, (
            f"{_task(task)}: requeued chunk {chunk} is {ChunkState(states[chunk]).label}"
        )


def _check_scheduler(core: Core) -> None:
    sched = core.sched
    for task_id in sched.runnable:
        task = core.tasks.get(task_id)
        assert task is not None, f"scheduler: runnable task {task_id!r} does not exist"
        assert task.state is TaskState.RUNNING, f"scheduler: {_task(task)} is runnable"
    for task in core.tasks.values():
        if task.state is TaskState.RUNNING and task.pending > 0:
            assert task.id in sched.runnable, (
                f"scheduler: {_task(task)} has {task.pending} pending chunks but is not in "
                "the runnable rotation; they would never be leased"
            )
    for session_id in sched.free_sessions:
        assert session_id in core.sessions, (
            f"scheduler: free session {session_id!r} is not a live session"
        )
    for session in core.sessions.values():
        if session.free > 0:
            assert session.id in sched.free_sessions, (
                f"scheduler: {_session(session)} has room for {session.free} more leases "
                "but is not listed as free; it would never be filled"
            )
