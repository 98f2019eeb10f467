"""Read-only views of the core's state, as the REST and live schema Structs."""

from __future__ import annotations

from coordinator.core.core import Core
from coordinator.core.lifecycle import ChunkState, TaskState
from coordinator.core.state import Task
from schema.rest import ChunkInfo, TaskInfo


def task_info(core: Core, task: Task) -> TaskInfo:
    treasury = core.treasury
    burn, chunks_per_min = treasury.last_minute(task, core.now)
    left = task.pending + task.leased
    running = task.state is TaskState.RUNNING
    needs = treasury.needs(task) if running else 0
    return TaskInfo(
        id=task.id, name=task.name, owner=task.owner, state=task.state.label,  # type: ignore[arg-type]
        chunks_total=task.chunks_total, chunks_pending=task.pending,
        chunks_leased=task.leased, chunks_done=task.done, chunks_failed=task.failed,
        items_total=task.items_total, items_done=task.items_done,
        max_concurrency=task.max_concurrency, max_attempts=task.max_attempts,
        chunk_size=task.chunk_size, requirements=list(task.requirements),
        created_ms=task.created_ms, finished_ms=task.finished_ms,
        price_per_chunk=task.price, budget=task.budget, spent=task.spent,
        reserved=treasury.reserved(task), remaining=max(0, treasury.available(task)),
        funds_needed=needs,
        needs_funds=running and task.pending > 0 and task.price > 0
        and treasury.available(task) < task.price,
        burn_per_minute=burn, chunks_per_minute=chunks_per_min,
        eta_ms=(left * 60_000 // chunks_per_min) if running and chunks_per_min else None,
        cost_to_finish=left * task.price * max(1, task.quorum_m),
        max_spend_per_minute=task.max_spend_per_minute, priority=task.priority,
        verification=task.verification, quorum_k=task.quorum_k, quorum_m=task.quorum_m,
        spot_per_mille=task.spot_per_mille, chunks_verifying=len(task.votes),
    )


def chunk_infos(core: Core, task: Task, offset: int, limit: int) -> list[ChunkInfo]:
    """Chunks ``offset .. offset+limit``; who produced a done chunk is in the store, not
    here (the caller fills it in)."""
    out = []
    for i in range(offset, min(task.chunks_total, offset + limit)):
        state = ChunkState(task.chunk_state[i])
        lease_id = task.lease_of_chunk.get(i)
        worker = None if lease_id is None else core.leases[lease_id].worker_id
        out.append(ChunkInfo(
            index=i, state=state.label,  # type: ignore[arg-type]
            attempts=task.failures.get(i, 0) + (1 if state in (ChunkState.LEASED,
                                                             ChunkState.DONE) else 0),
            worker=worker, lease_id=lease_id, error=task.last_error.get(i),
        ))
    return out
