"""Which chunk goes to which worker slot.

Runnable tasks rotate round-robin, so free slots spread across tasks; a task's cap on
concurrent leases ("bucket slots") and its capability requirements are checked for every
lease. A chunk that failed on a worker goes to a different worker when one can take it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.core import effects as fx
from coordinator.core.capabilities import unmet
from coordinator.core.lifecycle import ChunkState, TaskState, check_chunk_move
from coordinator.core.state import Lease, Session, Task

if TYPE_CHECKING:
    from coordinator.core.core import Core


class Scheduler:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.runnable: dict[str, None] = {}  # insertion order is the rotation
        self.free_sessions: dict[str, None] = {}
        self._match: dict[tuple[str, str], bool] = {}
        self.dirty = False

    # ---- bookkeeping called by the core -----------------------------------------------

    def task_runnable(self, task: Task) -> None:
        if task.state is TaskState.RUNNING and task.pending > 0:
            self.runnable.setdefault(task.id, None)
            self.dirty = True

    def task_stopped(self, task: Task) -> None:
        self.runnable.pop(task.id, None)
        for key in [k for k in self._match if k[1] == task.id]:
            del self._match[key]

    def session_free(self, session: Session) -> None:
        if session.free > 0 and session.id in self.core.sessions:
            self.free_sessions[session.id] = None
            self.dirty = True

    def session_gone(self, session: Session) -> None:
        self.free_sessions.pop(session.id, None)
        for key in [k for k in self._match if k[0] == session.id]:
            del self._match[key]

    def task_slot_freed(self, task: Task) -> None:
        if task.pending > 0:
            self.dirty = True

    # ---- filling slots ----------------------------------------------------------------

    def fill_all(self, now: int) -> None:
        if not self.dirty or not self.runnable or not self.free_sessions:
            return
        self.dirty = False
        for session_id in list(self.free_sessions):
            if not self.runnable:
                break
            self.fill_session(self.core.sessions[session_id], now)

    def fill_session_id(self, session_id: str, now: int) -> None:
        session = self.core.sessions.get(session_id)
        if session is not None:
            self.fill_session(session, now)

    def fill_session(self, session: Session, now: int) -> None:
        while session.free > 0 and self.runnable:
            if not self._lease_one(session, now):
                break
        if session.free <= 0:
            self.free_sessions.pop(session.id, None)

    def _lease_one(self, session: Session, now: int) -> bool:
        for task_id in list(self.runnable):
            task = self.core.tasks[task_id]
            if (task.leased >= task.max_concurrency or not self._matches(session, task)
                    or not self.core.treasury.can_lease(task, now)):
                continue
            chunk = self._next_chunk(task, session)
            if chunk is None:
                continue
            self._grant(task, chunk, session, now)
            if task.pending == 0:
                del self.runnable[task_id]
            elif task_id in self.runnable:  # rotate: the next free slot tries another task
                del self.runnable[task_id]
                self.runnable[task_id] = None
            return True
        return False

    def _matches(self, session: Session, task: Task) -> bool:
        key = (session.id, task.id)
        hit = self._match.get(key)
        if hit is None:
            hit = self._match[key] = not unmet(session.capabilities, task.requirements)
        return hit

    def _next_chunk(self, task: Task, session: Session) -> int | None:
        key = session.worker_key
        for i, chunk in enumerate(task.requeue):
            failed_on = task.failed_on.get(chunk, ())
            if key not in failed_on or not self._someone_fresh(task, failed_on):
                del task.requeue[i]
                return chunk
        states = task.chunk_state
        while task.cursor < task.chunks_total:
            task.cursor += 1
            if states[task.cursor - 1] == ChunkState.PENDING:
                return task.cursor - 1
        return None

    def _someone_fresh(self, task: Task, failed_on: set[str] | tuple[()]) -> bool:
        """Is a live, capable worker there that has not failed this chunk yet? If not, a
        worker that failed it may retry it rather than leave it pending forever."""
        return any(
            s.worker_key not in failed_on and self._matches(s, task)
            for s in self.core.sessions.values()
        )

    def _grant(self, task: Task, chunk: int, session: Session, now: int) -> None:
        core = self.core
        # A prefetched chunk waits for a slot: with n leases ahead of it on s slots it runs
        # in round n // s + 1, each round at most one chunk timeout (the worker's own limit;
        # the longest of the chunks ahead, which may belong to other tasks).
        rounds = len(session.leases) // session.slots + 1
        round_ms = max(
            [task.chunk_timeout_ms] + [
                core.tasks[core.leases[i].task_id].chunk_timeout_ms for i in session.leases
            ] if rounds > 1 else [task.chunk_timeout_ms]
        )
        lease = Lease(
            id=core.new_lease_id(), task_id=task.id, chunk=chunk, session_id=session.id,
            worker_key=session.worker_key, account_id=session.account_id,
            worker_id=session.worker_id, started_ms=now,
            deadline_ms=now + rounds * round_ms + core.config.lease_ms,
        )
        core.leases[lease.id] = lease
        task.lease_of_chunk[chunk] = lease.id
        task.chunk_state[chunk] = check_chunk_move(task.chunk_state[chunk], ChunkState.LEASED)
        task.leased += 1
        session.leases.add(lease.id)
        core.emit(fx.AssignChunk(
            core.cause, session.id, lease.id, task.id, chunk, task.code_ref,
            task.chunk_timeout_ms, task.failures.get(chunk, 0) + 1,
        ))
        core.emit(fx.TaskChanged(core.cause, task.id))
