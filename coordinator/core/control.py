"""A task's life as its owner steers it: submit, fund, pause, resume, change cap and
priority, cancel; and its end (completed, failed or cancelled), which refunds its escrow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.core import effects as fx
from coordinator.core.events import (
    TaskCancel,
    TaskFund,
    TaskPause,
    TaskResume,
    TaskSubmitted,
    TaskUpdate,
)
from coordinator.core.ledger import InsufficientFunds, wallet
from coordinator.core.lifecycle import (
    TERMINAL_TASK_STATES,
    ChunkState,
    TaskState,
    check_task_move,
)
from coordinator.core.state import Task
from schema.worker import Revoke

if TYPE_CHECKING:
    from coordinator.core.core import Core


class TaskControl:
    def __init__(self, core: Core) -> None:
        self.core = core

    def _reply(self, ok: bool = True, error: str = "", status: int = 200) -> None:
        self.core.emit(fx.Reply(self.core.cause, ok=ok, error=error, status=status))

    def _live(self, task_id: str, verb: str) -> Task | None:
        """The task if it can still be steered; otherwise reply why not."""
        task = self.core.tasks.get(task_id)
        if task is None:
            self._reply(False, "no such task", 404)
        elif task.state in TERMINAL_TASK_STATES:
            self._reply(False, f"task is already {task.state.label}; nothing to {verb}", 409)
        else:
            return task
        return None

    # ---- events -----------------------------------------------------------------------

    def submit(self, ev: TaskSubmitted) -> None:
        core = self.core
        if ev.task_id in core.tasks:
            self._reply(False, "task id already exists", 409)
            return
        have = core.treasury.ledger.balance(wallet(ev.owner))
        if ev.budget > have:
            self._reply(False, (
                f"the budget is {ev.budget} but your wallet holds {have}: short by "
                f"{ev.budget - have}; deposit that much (`tn wallet deposit`) or lower the budget"
            ), 402)
            return
        task = Task(
            id=ev.task_id, owner=ev.owner, name=ev.name, chunks_total=ev.chunks_total,
            items_total=ev.items_total, chunk_size=ev.chunk_size,
            max_concurrency=ev.max_concurrency, max_attempts=ev.max_attempts,
            chunk_timeout_ms=ev.chunk_timeout_ms, requirements=list(ev.requirements),
            code_ref=ev.code_ref, created_ms=ev.at_ms, price=ev.price_per_chunk,
            budget=ev.budget, max_spend_per_minute=ev.max_spend_per_minute,
            priority=ev.priority, verification=ev.verification, quorum_k=ev.quorum_k,
            quorum_m=ev.quorum_m, spot_per_mille=ev.spot_per_mille, salt=ev.salt,
        )
        core.tasks[task.id] = task
        core.emit(fx.PersistTask(
            ev.eid, task.id, task.owner, task.name, task.chunks_total, task.items_total,
            task.chunk_size, task.max_concurrency, task.max_attempts, task.chunk_timeout_ms,
            list(task.requirements), task.code_ref, task.created_ms, task.price, task.budget,
            task.max_spend_per_minute, task.priority, task.verification, task.quorum_k,
            task.quorum_m, task.spot_per_mille, task.salt,
        ))
        if ev.budget:
            core.treasury.fund(task, ev.budget)
        self._reply()
        core.emit(fx.TaskChanged(ev.eid, task.id))
        if task.finished:  # no chunks at all: nothing to wait for
            self.finish(task, TaskState.COMPLETED, ev.at_ms)
            return
        core.sched.task_runnable(task)
        core.sched.fill_all(ev.at_ms)

    def fund(self, ev: TaskFund) -> None:
        task = self._live(ev.task_id, "fund")
        if task is None:
            return
        try:
            self.core.treasury.fund(task, ev.amount)
        except InsufficientFunds as exc:
            self._reply(False, (f"your wallet holds {exc.balance}, short by {exc.shortfall}; "
                                "deposit first (`tn wallet deposit`)"), 402)
            return
        self._reply()
        self._changed(task)

    def cancel(self, ev: TaskCancel) -> None:
        task = self._live(ev.task_id, "cancel")
        if task is not None:
            self._revoke_all(task, ev.reason)
            self.finish(task, TaskState.CANCELLED, ev.at_ms)
            self._reply()

    def pause(self, ev: TaskPause) -> None:
        task = self._live(ev.task_id, "pause")
        if task is None:
            return
        if task.state is TaskState.PAUSED:
            self._reply()  # pausing twice is no error
            return
        task.state = check_task_move(task.state, TaskState.PAUSED)
        self.core.sched.task_stopped(task)
        self._revoke_all(task, "task paused by its owner")
        self.core.emit(fx.PersistTaskState(ev.eid, task.id, task.state.label, None))
        self._reply()
        self._changed(task)

    def resume(self, ev: TaskResume) -> None:
        task = self._live(ev.task_id, "resume")
        if task is None:
            return
        if task.state is TaskState.PAUSED:
            task.state = check_task_move(task.state, TaskState.RUNNING)
            self.core.emit(fx.PersistTaskState(ev.eid, task.id, task.state.label, None))
        self._reply()
        self._changed(task)

    def update(self, ev: TaskUpdate) -> None:
        task = self._live(ev.task_id, "change")
        if task is None:
            return
        if ev.max_concurrency is not None:
            task.max_concurrency = ev.max_concurrency  # a lower cap lets running chunks end
            task.cap_mark = self.core.last_id
        if ev.priority is not None:
            task.priority = ev.priority
        self.core.emit(fx.PersistTaskSettings(ev.eid, task.id, task.max_concurrency,
                                              task.priority))
        self._reply()
        self._changed(task)

    # ---- helpers ----------------------------------------------------------------------

    def _changed(self, task: Task) -> None:
        core = self.core
        core.emit(fx.TaskChanged(core.cause, task.id))
        core.sched.task_runnable(task)
        core.sched.dirty = True
        core.sched.fill_all(core.now)

    def _revoke_all(self, task: Task, reason: str) -> None:
        """Withdraw every lease of the task at once; their chunks return unpaid, and no
        attempt is counted against them."""
        core = self.core
        for lease_id in sorted(task.lease_of_chunk.values()):
            lease = core.leases[lease_id]
            if lease.session_id is not None:
                core.send(lease.session_id, Revoke(lease_id, reason))
            core.outcomes.drop_lease(lease, ChunkState.PENDING, core.now)

    def finish(self, task: Task, state: TaskState, now: int) -> None:
        core = self.core
        task.state = check_task_move(task.state, state)
        task.finished_ms = now
        task.requeue.clear()
        if task.votes:  # unverified results of a cancelled task are never paid
            task.votes.clear()
            task.votes_held = 0
            core.emit(fx.PersistVotesCleared(core.cause, task.id, None))
        core.treasury.refund(task)
        core.sched.task_stopped(task)
        core.emit(fx.PersistTaskState(core.cause, task.id, state.label, now))
        core.emit(fx.TaskChanged(core.cause, task.id))
