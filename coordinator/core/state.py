"""The core's in-memory state: tasks, leases and worker sessions.

Memory is bounded by what is live, not by history: a task holds one byte per chunk (its
state) plus a queue of chunks returned for retry; chunks past ``cursor`` were never leased
and cost nothing more than their state byte.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from coordinator.core.effects import Output
from coordinator.core.lifecycle import ChunkState, TaskState


@dataclass(slots=True)
class Task:
    id: str
    owner: str
    name: str
    chunks_total: int
    items_total: int
    chunk_size: int
    max_concurrency: int
    max_attempts: int
    chunk_timeout_ms: int
    requirements: list[str]
    code_ref: str
    created_ms: int
    price: int = 0  # credits per accepted chunk (0: free, e.g. on one's own workers)
    budget: int = 0  # what the task was funded with when created
    max_spend_per_minute: int = 0  # 0: no limit
    spent: int = 0  # paid out of escrow for accepted chunks
    priority: int = 5  # 1-10: its weight among its owner's tasks in the fair share
    verification: str = "none"  # none, spot or quorum
    quorum_k: int = 1  # quorum: replicas run on distinct accounts ...
    quorum_m: int = 1  # ... of which this many must agree by digest
    spot_per_mille: int = 0  # spot: how many chunks in 1000 get a second opinion
    salt: str = ""  # secret per task: which chunks get spot checks, unguessable by workers
    state: TaskState = TaskState.RUNNING
    finished_ms: int | None = None
    chunk_state: bytearray = field(default_factory=bytearray)
    cursor: int = 0  # chunks before it were leased once; pending ones among them are in requeue
    requeue: deque[int] = field(default_factory=deque)
    leased: int = 0
    done: int = 0
    failed: int = 0
    items_done: int = 0
    failures: dict[int, int] = field(default_factory=dict)  # chunk -> failed attempts
    failed_on: dict[int, set[str]] = field(default_factory=dict)  # chunk -> worker keys
    last_error: dict[int, str] = field(default_factory=dict)
    lease_of_chunk: dict[int, int] = field(default_factory=dict)
    votes: dict[int, list[Vote]] = field(default_factory=dict)  # results awaiting a verdict
    votes_held: int = 0  # results in ``votes``: each keeps its price reserved in escrow
    cap_mark: int = 0  # the last id drawn when the cap last changed: leases up to it may
    # outnumber a lowered cap (they run to their end; no new lease starts until under it)

    def __post_init__(self) -> None:
        if not self.chunk_state:
            self.chunk_state = bytearray(self.chunks_total)

    @property
    def pending(self) -> int:
        return self.chunks_total - self.leased - self.done - self.failed

    def items_in(self, chunk: int) -> int:
        return min(self.chunk_size, self.items_total - chunk * self.chunk_size)

    @property
    def finished(self) -> bool:
        return self.done + self.failed == self.chunks_total

    def count(self, state: ChunkState) -> int:
        return {
            ChunkState.PENDING: self.pending,
            ChunkState.LEASED: self.leased,
            ChunkState.DONE: self.done,
            ChunkState.FAILED: self.failed,
        }[state]


@dataclass(frozen=True, slots=True)
class Vote:
    """One replica's result for a chunk under verification, kept (and persisted) until the
    chunk is accepted: then the agreeing ones are paid and the rest are not."""

    lease_id: int
    account_id: str
    worker_id: str
    digest: str  # computed by the coordinator over the output, never taken from the worker
    output: Output
    at_ms: int


@dataclass(slots=True)
class Lease:
    id: int
    task_id: str
    chunk: int
    session_id: str | None  # None while orphaned (its session dropped; resumable until expiry)
    worker_key: str
    account_id: str
    worker_id: str
    started_ms: int
    deadline_ms: int  # chunk timeout backstop
    orphaned_until_ms: int = 0
    done: int = 0
    total: int = 0


@dataclass(slots=True)
class Session:
    id: str
    account_id: str
    worker_id: str
    capabilities: dict[str, str]
    slots: int
    last_seen_ms: int
    leases: set[int] = field(default_factory=set)
    sandbox: list[str] = field(default_factory=list)
    prefetch: int = 0  # leases it may hold beyond its slots, so no slot idles between chunks

    @property
    def worker_key(self) -> str:
        return worker_key(self.account_id, self.worker_id)

    @property
    def capacity(self) -> int:
        return self.slots + self.prefetch

    @property
    def free(self) -> int:
        return self.capacity - len(self.leases)


def worker_key(account_id: str, worker_id: str) -> str:
    return f"{account_id}/{worker_id}"
