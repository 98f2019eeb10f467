"""What happens when a chunk's lease ends: a result (accepted, or held as a vote until
verification decides), a failure (retried, or final: the chunk is poison), or nothing
(expired, revoked: the chunk goes back to the queue, blaming no one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from coordinator.core import effects as fx
from coordinator.core.events import FailIn, ResultIn
from coordinator.core.lifecycle import (
    TERMINAL_TASK_STATES,
    ChunkState,
    TaskState,
    check_chunk_move,
)
from coordinator.core.msgpack_peek import array_length
from coordinator.core.state import Lease, Task, Vote, worker_key
from coordinator.core.verification import digest, spot_checked, verdict
from schema.worker import Accepted, Rejected

if TYPE_CHECKING:
    from coordinator.core.core import Core

POISON_WORKERS = 3  # a chunk failing on this many distinct workers is the chunk's fault


class Outcomes:
    def __init__(self, core: Core) -> None:
        self.core = core

    # ---- results ----------------------------------------------------------------------

    def result(self, ev: ResultIn) -> None:
        core = self.core
        lease = core.owned_lease(ev.session_id, ev.lease_id, ev.at_ms)
        if lease is None:
            return
        task = core.tasks[lease.task_id]
        n = task.items_in(lease.chunk)
        got = array_length(ev.output)
        if got != n:
            detail = "not a MessagePack array" if got is None else f"{got} outputs"
            self.chunk_failed(
                lease, f"result has {detail} for {n} items; a result needs one output per item",
                False, ev.at_ms,
            )
            core.send(ev.session_id, Rejected(lease.id, "result does not match the chunk"))
            core.sched.fill_session_id(ev.session_id, ev.at_ms)
            return
        vote = Vote(lease.id, lease.account_id, lease.worker_id,
                    ev.digest if task.verification == "none" else digest(ev.output),
                    fx.Output.of(ev.output), ev.at_ms)
        votes = [*task.votes.get(lease.chunk, ()), vote]
        second = task.verification == "spot" and len(votes) == 1 and spot_checked(
            task, lease.chunk, core.trust.trusted(lease.worker_key),
            core.trust.config.trusted_spot_divisor)
        v = verdict(task, votes, second)
        core.remember_accepted(lease)
        if v.outcome == "more":
            task.votes[lease.chunk] = votes
            task.votes_held += 1
            core.emit(fx.PersistVote(ev.eid, task.id, lease.chunk, lease.id, lease.account_id,
                                     lease.worker_id, vote.digest, vote.output, ev.at_ms))
            self.drop_lease(lease, ChunkState.PENDING, ev.at_ms)
            core.send(ev.session_id, Accepted(lease.id, 0))
        elif v.outcome == "fail":
            self._acknowledged(lease, vote)
            self._forget_votes(task, lease.chunk)
            self.chunk_failed(lease, v.reason, False, ev.at_ms)
            core.send(ev.session_id, Accepted(lease.id, 0))
        else:
            winner = next(x for x in votes if v.agrees(x))
            core.emit(fx.PersistResult(
                ev.eid, task.id, lease.chunk, winner.lease_id, winner.account_id,
                winner.worker_id, winner.output, winner.digest, n, ev.at_ms,
            ))
            if winner.lease_id != lease.id:
                self._acknowledged(lease, vote)
            self.drop_lease(lease, ChunkState.DONE, ev.at_ms)
            task.done += 1
            task.items_done += n
            credited = self._settle(task, lease, votes, v.agrees)
            core.send(ev.session_id, Accepted(lease.id, credited))
            if task.finished:
                core.control.finish(task, TaskState.FAILED if task.failed
                                    else TaskState.COMPLETED, ev.at_ms)
        core.sched.fill_session_id(ev.session_id, ev.at_ms)

    def _settle(self, task: Task, lease: Lease, votes: list[Vote],
                agrees: Callable[[Vote], bool]) -> int:
        """Pay every replica that agrees with the accepted result, nobody else; adjust their
        standing; blame workers that failed the chunk another completed. Returns what the
        worker of ``lease`` was credited."""
        core = self.core
        credited = 0
        for v in votes:
            if agrees(v):
                paid = core.treasury.pay(task, v.account_id, v.worker_id, lease.chunk,
                                         v.lease_id)
                if v.lease_id == lease.id:
                    credited = paid
                if len(votes) > 1:
                    core.trust.validated(worker_key(v.account_id, v.worker_id))
            else:
                core.trust.invalidated(worker_key(v.account_id, v.worker_id), core.now)
        self._forget_votes(task, lease.chunk)
        agreed = {worker_key(v.account_id, v.worker_id) for v in votes if agrees(v)}
        for key in sorted(task.failed_on.pop(lease.chunk, ())):
            if key not in agreed:  # a worker that failed it, then completed it, is not blamed
                core.trust.blamed(key, core.now)
        return credited

    def _acknowledged(self, lease: Lease, vote: Vote) -> None:
        """A replica told ``accepted`` whose result no row keeps (see fx.PersistAck)."""
        self.core.emit(fx.PersistAck(self.core.cause, lease.task_id, lease.chunk, lease.id,
                                     lease.account_id, lease.worker_id, vote.digest,
                                     vote.at_ms))

    def _forget_votes(self, task: Task, chunk: int) -> None:
        held = task.votes.pop(chunk, None)
        if held:
            task.votes_held -= len(held)
            self.core.emit(fx.PersistVotesCleared(self.core.cause, task.id, chunk))

    # ---- failures ---------------------------------------------------------------------

    def fail(self, ev: FailIn) -> None:
        lease = self.core.owned_lease(ev.session_id, ev.lease_id, ev.at_ms)
        if lease is None:
            return
        self.chunk_failed(lease, ev.error, ev.retryable, ev.at_ms)
        self.core.sched.fill_session_id(ev.session_id, ev.at_ms)

    def chunk_failed(self, lease: Lease, error: str, retryable: bool, now: int) -> None:
        """A failed attempt. The chunk fails for good when it is not retryable, when its
        attempts are used up, or when it failed on POISON_WORKERS distinct workers."""
        core = self.core
        task = core.tasks[lease.task_id]
        attempts = task.failures.get(lease.chunk, 0) + 1
        task.failures[lease.chunk] = attempts
        failed_on = task.failed_on.setdefault(lease.chunk, set())
        failed_on.add(lease.worker_key)
        task.last_error[lease.chunk] = error
        poison = len(failed_on) >= POISON_WORKERS
        final = not retryable or attempts >= task.max_attempts or poison
        if poison:
            error = f"poison: failed on {len(failed_on)} workers; last: {error}"
            task.last_error[lease.chunk] = error
        core.emit(fx.PersistFailure(
            core.cause, task.id, lease.chunk, lease.id, lease.account_id, lease.worker_id,
            error, final, now,
        ))
        self.drop_lease(lease, ChunkState.FAILED if final else ChunkState.PENDING, now)
        if final:
            task.failed += 1
            task.failed_on.pop(lease.chunk, None)  # the chunk's fault: blame no one
            self._forget_votes(task, lease.chunk)
            if task.finished:
                core.control.finish(task, TaskState.FAILED, now)

    # ---- ending leases ----------------------------------------------------------------

    def drop_lease(self, lease: Lease, to: ChunkState, now: int) -> None:
        """End a lease: the chunk moves to ``to`` (PENDING re-queues it)."""
        core = self.core
        del core.leases[lease.id]
        if lease.session_id is None:
            orphans = core.orphans.get(lease.worker_key)
            if orphans is not None:
                orphans.discard(lease.id)
                if not orphans:
                    del core.orphans[lease.worker_key]
        task = core.tasks[lease.task_id]
        del task.lease_of_chunk[lease.chunk]
        task.leased -= 1
        task.chunk_state[lease.chunk] = check_chunk_move(task.chunk_state[lease.chunk], to)
        if lease.session_id is not None:
            session = core.sessions[lease.session_id]
            session.leases.discard(lease.id)
            core.sched.session_free(session)
        if to is ChunkState.PENDING and task.state not in TERMINAL_TASK_STATES:
            task.requeue.append(lease.chunk)
            core.sched.task_runnable(task)
        core.sched.lease_ended(task)
        core.emit(fx.TaskChanged(core.cause, task.id))
