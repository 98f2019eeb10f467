"""The simulation's checks of the core's effects, of each tick's promise and of the end state."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from coordinator.core import effects as fx
from coordinator.core.capabilities import unmet
from coordinator.core.core import Core
from coordinator.core.lifecycle import TERMINAL_TASK_STATES, TaskState
from coordinator.core.state import worker_key
from schema.worker import Accepted, Rejected, Welcome
from tests.sim.sim_model import CONFIG, Conn, Params, RetryDeadlock, Spec, Stats
from tests.sim.sim_store import Store


class SimChecks:
    """The checks Sim runs after every event, every tick and at the end; Sim sets the state."""

    p: Params
    now: int
    gen: int
    epoch: int
    core: Core
    store: Store
    conns: dict[str, Conn]
    specs: dict[str, Spec]
    cancel_asked: set[str]
    granted: dict[int, tuple[str, int, str]]
    orphaned_since: dict[int, int]
    failed_by: dict[tuple[str, int], set[str]]
    uncommitted_results: set[tuple[str, int]]
    stats: Stats
    _commit: Callable[[int], None]

    def _check_effects(self, effects: list[fx.Effect]) -> None:
        for e in effects:
            match e:
                case fx.AssignChunk():
                    assert e.lease_id not in self.granted, f"lease id {e.lease_id} reused"
                    key = (e.task_id, e.chunk_index)
                    assert key not in self.store.results, f"chunk {key} assigned after acceptance"
                    conn = self.conns[e.session_id]
                    self.granted[e.lease_id] = (e.task_id, e.chunk_index, conn.worker.key)
                case fx.PersistResult():
                    key = (e.task_id, e.chunk_index)
                    assert key not in self.store.results and key not in self.uncommitted_results, (
                        f"chunk {key} accepted twice (second time with lease {e.lease_id})"
                    )
                    self.uncommitted_results.add(key)
                    who = worker_key(e.account_id, e.worker_id)
                    assert self.granted.get(e.lease_id) == (*key, who), (
                        f"result persisted for lease {e.lease_id} as {key} by {who}, but that "
                        f"lease was granted as {self.granted.get(e.lease_id)}"
                    )
                    assert e.items == self.specs[e.task_id].items_in(e.chunk_index)
                    assert len(msgspec.msgpack.decode(e.output)) == e.items
                case _:
                    pass

    def _count(self, effects: list[fx.Effect]) -> None:
        saw = self.stats.saw
        for e in effects:
            match e:
                case fx.Send(message=Welcome() as w):
                    saw("welcome") if not (w.resumed or w.dropped) else None
                    saw("welcome resumed") if w.resumed else None
                    saw("welcome dropped") if w.dropped else None
                case fx.Send(message=Rejected(reason=why)):
                    saw(f"rejected: {why[:24]}")
                case fx.Send(message=Accepted()) if not any(
                    isinstance(x, fx.PersistResult) for x in effects
                ):
                    saw("accepted again")
                case fx.Send(message=m):
                    saw(type(m).__name__.lower())
                case fx.CloseSession(code=code):
                    saw(f"close {code}")
                case fx.PersistFailure(final=final):
                    saw("failure final" if final else "failure retry")
                    who = worker_key(e.account_id, e.worker_id)
                    self.failed_by.setdefault((e.task_id, e.chunk_index), set()).add(who)
                case fx.PersistTaskState(state=state):
                    saw(f"task {state}")
                case fx.Reply(ok=False, status=status):
                    saw(f"reply {status}")
                case fx.AssignChunk(attempt=attempt):
                    saw("assign retry" if attempt > 1 else "assign")
                    key = self.conns[e.session_id].worker.key
                    if key in self.failed_by.get((e.task_id, e.chunk_index), ()):
                        saw("retried by a worker that failed it")
                case _:
                    pass

    def _track_orphans(self) -> None:
        since = self.orphaned_since
        self.orphaned_since = {
            lease.id: since.get(lease.id, self.now)
            for lease in self.core.leases.values() if lease.session_id is None
        }

    def _check_after_tick(self) -> None:
        """What a tick promises (invariant 3): nothing overdue survives it."""
        now, core = self.now, self.core
        for session in core.sessions.values():
            assert now - session.last_seen_ms <= CONFIG.lease_ms, (
                f"session {session.id} silent since {session.last_seen_ms} survived a tick"
            )
        for lease_id, since in self.orphaned_since.items():
            assert now < since + CONFIG.disconnect_grace_ms, (
                f"lease {lease_id}, orphaned since {since} ms, survived the tick after its "
                f"{CONFIG.disconnect_grace_ms} ms grace"
            )
        for lease in core.leases.values():
            assert lease.deadline_ms > now, (
                f"lease {lease.id} past its deadline {lease.deadline_ms} survived a tick"
            )

    def _deferred_forever(self) -> list[str]:
        """Requeued chunks that every live capable session has failed before."""
        found = []
        for task in self.core.tasks.values():
            capable = {
                s.worker_key for s in self.core.sessions.values()
                if not unmet(s.capabilities, task.requirements)
            }
            for chunk in task.requeue:
                failed_on = task.failed_on.get(chunk, set())
                if len(capable) > 1 and capable <= failed_on:
                    found.append(f"{task.id}/{chunk} failed on {sorted(failed_on)}")
        return found

    def _final_checks(self) -> None:
        self._commit(self.gen)
        stuck = {
            t.id: f"{t.done}+{t.failed}/{t.chunks_total} done, {t.leased} leased, "
                  f"{t.pending} pending, failures {t.failures}"
            for t in self.core.tasks.values() if t.state not in TERMINAL_TASK_STATES
        }
        if stuck:
            deadlocked = self._deferred_forever()
            if deadlocked:
                raise RetryDeadlock(
                    f"chunks never retried although attempts are left, because every live "
                    f"capable worker already failed them once: {deadlocked}; stuck: {stuck}"
                )
        capped = self.now >= self.p.chaos_ms + self.p.drain_max_ms
        why = "the drain's hard cap" if capped else f"{self.p.drain_ms} ms after its last progress"
        assert not stuck, f"tasks still running at {self.now} ms, {why}: {stuck}"
        for task_id, task in self.core.tasks.items():
            state = self.store.states[task_id][0]
            assert state == task.state.label, (
                f"task {task_id}: the core says {task.state.label}, the store {state}"
            )
            done = sum(1 for tid, _ in self.store.results if tid == task_id)
            assert done == task.done, f"task {task_id}: {task.done} done, {done} stored"
            if task.state is TaskState.COMPLETED:
                assert done == task.chunks_total
            if task.state is TaskState.CANCELLED:
                assert task_id in self.cancel_asked, f"task {task_id} cancelled by nobody"
        assert set(self.core.tasks) == set(self.store.tasks)
        assert self.stats.crashes == 0 or self.epoch == self.stats.crashes + 1
