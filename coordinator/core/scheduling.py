"""Which chunk goes to which worker slot.

Weighted fair share: a free slot goes to the customer with the fewest chunks in flight,
and among that customer's tasks to the one with the fewest in flight per unit of priority
(1-10). So one huge task cannot starve a small one, and a task alone gets every capable
slot up to its cap. A task is a candidate for a slot only if the worker meets its
requirements, it is under its concurrency cap ("bucket slots"), its escrow can pay for one
more chunk and the worker's account is in good standing. A chunk that failed on a worker
goes to another worker when one can take it; a chunk under verification never goes twice
to the same account.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.core import effects as fx
from coordinator.core.capabilities import unmet
from coordinator.core.lifecycle import ChunkState, TaskState, check_chunk_move
from coordinator.core.state import Lease, Session, Task

if TYPE_CHECKING:
    from coordinator.core.core import Core

WEIGHT_SCALE = 2520  # divisible by every priority 1..10, so shares compare exactly


class Scheduler:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.runnable: dict[str, None] = {}  # running tasks with pending chunks
        self.free_sessions: dict[str, None] = {}
        self.in_flight: dict[str, int] = {}  # customer -> leases of their running tasks
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

    def lease_ended(self, task: Task) -> None:
        self.in_flight[task.owner] -= 1
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
        limit = self.core.trust.lease_limit(session.worker_key, now)
        while session.free > 0 and self.runnable:
            if limit is not None and len(session.leases) >= limit:
                break
            if not self._lease_one(session, now):
                break
        if session.free <= 0:
            self.free_sessions.pop(session.id, None)

    def _lease_one(self, session: Session, now: int) -> bool:
        """Lease the fairest eligible chunk to ``session``; False if there is none."""
        best: tuple[int, int] | None = None
        choice: tuple[Task, int] | None = None
        for task_id in self.runnable:
            task = self.core.tasks[task_id]
            share = (self.in_flight.get(task.owner, 0),
                     task.leased * WEIGHT_SCALE // task.priority)
            if best is not None and share >= best:
                continue
            if not self.eligible(task, session, now):
                continue
            chunk = self._peek_chunk(task, session)
            if chunk is not None:
                best, choice = share, (task, chunk)
        if choice is None:
            return False
        task, chunk = choice
        self._take(task, chunk)
        self._grant(task, chunk, session, now)
        if task.pending == 0:
            del self.runnable[task.id]
        return True

    def eligible(self, task: Task, session: Session, now: int) -> bool:
        return (task.leased < task.max_concurrency and self.matches(session, task)
                and self.core.treasury.can_lease(task, now))

    def matches(self, session: Session, task: Task) -> bool:
        key = (session.id, task.id)
        hit = self._match.get(key)
        if hit is None:
            hit = self._match[key] = not unmet(session.capabilities, task.requirements)
        return hit

    def _peek_chunk(self, task: Task, session: Session) -> int | None:
        for chunk in task.requeue:
            if self._suits(task, chunk, session):
                return chunk
        states = task.chunk_state
        while task.cursor < task.chunks_total:
            chunk = task.cursor
            if states[chunk] != ChunkState.PENDING:
                task.cursor += 1
            elif chunk in task.votes:  # after a restart: a vote is in, route it like a retry
                task.cursor += 1
                task.requeue.append(chunk)
                if self._suits(task, chunk, session):
                    return chunk
            else:
                return chunk
        return None

    def _take(self, task: Task, chunk: int) -> None:
        if task.cursor < task.chunks_total and chunk == task.cursor:
            task.cursor += 1
        else:
            task.requeue.remove(chunk)

    def _suits(self, task: Task, chunk: int, session: Session) -> bool:
        votes = task.votes.get(chunk)
        if votes and any(v.account_id == session.account_id for v in votes):
            return False  # replicas must come from distinct accounts
        failed_on = task.failed_on.get(chunk, ())
        return session.worker_key not in failed_on or not self._someone_fresh(task, failed_on)

    def _someone_fresh(self, task: Task, failed_on: set[str] | tuple[()]) -> bool:
        """Is a live, capable worker in good standing there that has not failed this chunk
        yet? If not, a worker that failed it may retry it rather than leave it pending."""
        trust, now = self.core.trust, self.core.now
        return any(
            s.worker_key not in failed_on and self.matches(s, task)
            and trust.lease_limit(s.worker_key, now) != 0
            for s in self.core.sessions.values()
        )

    def _grant(self, task: Task, chunk: int, session: Session, now: int) -> None:
        core = self.core
        # A prefetched chunk waits for a slot: with n leases ahead of it on s slots it runs
        # in round n // s + 1, each round at most one chunk timeout (the worker's own limit;
        # the longest of the chunks ahead, which may belong to other tasks).
        rounds = len(session.leases) // session.slots + 1
        round_ms = task.chunk_timeout_ms
        if rounds > 1:
            round_ms = max([round_ms] + [
                core.tasks[core.leases[i].task_id].chunk_timeout_ms for i in session.leases])
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
        self.in_flight[task.owner] = self.in_flight.get(task.owner, 0) + 1
        session.leases.add(lease.id)
        core.emit(fx.AssignChunk(
            core.cause, session.id, lease.id, task.id, chunk, task.code_ref,
            task.chunk_timeout_ms, task.failures.get(chunk, 0) + len(task.votes.get(chunk, ()))
            + 1,
        ))
        core.emit(fx.TaskChanged(core.cause, task.id))

    # ---- why a worker is idle ---------------------------------------------------------

    def why_idle(self, session: Session, now: int) -> list[str]:
        """Plain reasons a session with free slots gets no work, one per task at most."""
        limited = self.core.trust.why_limited(session.worker_key, now)
        if limited is not None and (limited.startswith("quarantined") or session.leases):
            return [f"this worker is {limited}"]
        if session.free <= 0:
            return ["every slot (and prefetch) is in use"]
        reasons = []
        for task in self.core.tasks.values():
            if task.state is TaskState.PAUSED:
                reasons.append(f"task {task.id} is paused")
            if task.state is not TaskState.RUNNING or task.pending == 0:
                continue
            missing = unmet(session.capabilities, task.requirements)
            if missing:
                reasons.append(f"task {task.id} requires {', '.join(missing)}")
            elif task.leased >= task.max_concurrency:
                reasons.append(f"task {task.id} is at its cap of {task.max_concurrency} "
                               "chunks at once")
            elif not self.core.treasury.can_lease(task, now):
                reasons.append(f"task {task.id} needs funds")
            elif self._peek_chunk(task, session) is None:
                reasons.append(f"task {task.id}: its pending chunks need a different worker "
                               "(verification or retry on another account)")
        return reasons or ["no task has pending work"]
