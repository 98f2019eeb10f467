"""The simulation's durable rows, and what they hand a coordinator rebooted after a crash."""

from __future__ import annotations

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.lifecycle import TaskState
from coordinator.core.state import Task, worker_key


class Store:
    """The durable rows, applied one group commit at a time."""

    def __init__(self) -> None:
        self.tasks: dict[str, fx.PersistTask] = {}
        self.states: dict[str, tuple[str, int | None]] = {}
        self.results: dict[tuple[str, int], fx.PersistResult] = {}
        self.by_lease: dict[int, fx.PersistResult] = {}
        self.failures: list[fx.PersistFailure] = []

    def apply(self, e: fx.Effect) -> None:
        match e:
            case fx.PersistTask():
                assert e.task_id not in self.tasks, f"task {e.task_id} persisted twice"
                self.tasks[e.task_id] = e
                self.states[e.task_id] = ("running", None)
            case fx.PersistTaskState():
                old = self.states.get(e.task_id)
                assert old is not None, f"state of unknown task {e.task_id} persisted"
                assert old[0] == "running", (
                    f"task {e.task_id} moved from {old[0]} to {e.state} in the store"
                )
                self.states[e.task_id] = (e.state, e.finished_ms)
            case fx.PersistResult():
                key = (e.task_id, e.chunk_index)
                assert key not in self.results, (
                    f"chunk {key} accepted twice: leases {self.results[key].lease_id} and "
                    f"{e.lease_id}"
                )
                assert e.lease_id not in self.by_lease, f"lease {e.lease_id} persisted twice"
                self.results[key] = self.by_lease[e.lease_id] = e
            case fx.PersistFailure():
                self.failures.append(e)

    def restore(self, core: Core) -> None:
        """What the real store's load_tasks/recent_accepted hand a freshly booted core."""
        for task_id, t in self.tasks.items():
            state, finished = self.states[task_id]
            task = Task(
                id=t.task_id, owner=t.owner, name=t.name, chunks_total=t.chunks_total,
                items_total=t.items_total, chunk_size=t.chunk_size,
                max_concurrency=t.max_concurrency, max_attempts=t.max_attempts,
                chunk_timeout_ms=t.chunk_timeout_ms, requirements=list(t.requirements),
                code_ref=t.code_ref, created_ms=t.created_ms,
                state=TaskState[state.upper()], finished_ms=finished,
            )
            done = [(c, r.items) for (tid, c), r in self.results.items() if tid == task_id]
            failed: dict[int, str] = {}
            failures: dict[int, int] = {}
            for f in self.failures:
                if f.task_id == task_id:
                    failures[f.chunk_index] = failures.get(f.chunk_index, 0) + 1
                    if f.final:
                        failed[f.chunk_index] = f.error
            core.restore_task(task, done, failed, failures)
        core.restore_accepted(
            [(r.lease_id, worker_key(r.account_id, r.worker_id)) for r in self.by_lease.values()]
        )
