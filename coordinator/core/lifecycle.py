"""Lifecycles as tables: the states of tasks and chunks and the moves allowed between them.

Every state change in the core goes through ``move``; an illegal move is our bug, not the
peer's, and raises ``IllegalMove`` loudly.
"""

from __future__ import annotations

from enum import IntEnum


class IllegalMove(AssertionError):
    pass


class TaskState(IntEnum):
    RUNNING = 0
    COMPLETED = 1
    FAILED = 2  # finished, but at least one chunk failed for good
    CANCELLED = 3
    PAUSED = 4  # no new leases; its leases were revoked; resumable

    @property
    def label(self) -> str:
        return self.name.lower()


class ChunkState(IntEnum):
    PENDING = 0
    LEASED = 1
    DONE = 2
    FAILED = 3

    @property
    def label(self) -> str:
        return self.name.lower()


TASK_MOVES: dict[TaskState, frozenset[TaskState]] = {
    TaskState.RUNNING: frozenset({
        TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.PAUSED}),
    TaskState.PAUSED: frozenset({TaskState.RUNNING, TaskState.CANCELLED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}

CHUNK_MOVES: dict[ChunkState, frozenset[ChunkState]] = {
    ChunkState.PENDING: frozenset({ChunkState.LEASED}),
    # back to PENDING when a lease expires, is revoked or fails with retries left
    ChunkState.LEASED: frozenset({ChunkState.PENDING, ChunkState.DONE, ChunkState.FAILED}),
    ChunkState.DONE: frozenset(),
    ChunkState.FAILED: frozenset(),
}

TERMINAL_TASK_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})


def check_task_move(old: TaskState, new: TaskState) -> TaskState:
    if new not in TASK_MOVES[old]:
        raise IllegalMove(f"task cannot move from {old.label} to {new.label}")
    return new


def check_chunk_move(old: int, new: ChunkState) -> int:
    if new not in CHUNK_MOVES[ChunkState(old)]:
        raise IllegalMove(f"chunk cannot move from {ChunkState(old).label} to {new.label}")
    return int(new)
