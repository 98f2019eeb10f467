"""Effects: what the core asks the adapters to do. Each repeats the id of the event that caused it.

The runtime applies a turn's effects in a fixed order: persistence first (one group commit),
then messages and publications. So nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import msgspec

from schema.worker import CoordinatorMessage


class Effect(msgspec.Struct, frozen=True, tag_field="fx", gc=False):
    """(``gc=False``: effects hold no cycles, so the garbage collector need not track them;
    it then has no work for those the journal keeps until it encodes them.)"""

    cause: int


class Output(bytes):
    """A result's output as effects carry it to the store: bytes in every way but one, the
    journal records it as its length (the event that brought it holds it in full; see
    coordinator/recorder.py). The core makes one per result it keeps."""

    __slots__ = ()

    @classmethod
    def of(cls, data: bytes) -> Output:
        return data if type(data) is cls else cls(data)


def in_full(obj: object) -> bytes:
    """An ``enc_hook`` that encodes outputs in full (msgspec encodes a subclass of bytes only
    through a hook): for encoders of effects other than the journal's."""
    if type(obj) is Output:
        return bytes(obj)
    raise NotImplementedError(f"cannot encode a {type(obj).__name__}")


# ---- messages -------------------------------------------------------------------------


class Send(Effect, tag="send", frozen=True):
    session_id: str
    message: CoordinatorMessage


class AssignChunk(Effect, tag="assign", frozen=True):
    """Send an ``assign``; the adapter adds the chunk's items from the task's artifacts."""

    session_id: str
    lease_id: int
    task_id: str
    chunk_index: int
    code_ref: str
    deadline_ms: int
    attempt: int


class CloseSession(Effect, tag="close", frozen=True):
    session_id: str
    code: int
    reason: str


class Reply(Effect, tag="reply", frozen=True):
    """Answer the caller that submitted event ``cause`` (a REST request), after the commit."""

    ok: bool
    error: str = ""
    status: int = 200
    value: int = 0  # e.g. the id of what the request created


class TaskChanged(Effect, tag="task_changed", frozen=True):
    task_id: str


# ---- persistence ----------------------------------------------------------------------


class PersistTask(Effect, tag="p_task", frozen=True):
    task_id: str
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
    price_per_chunk: int = 0
    budget: int = 0
    max_spend_per_minute: int = 0
    priority: int = 5
    verification: str = "none"
    quorum_k: int = 1
    quorum_m: int = 1
    spot_per_mille: int = 0
    salt: str = ""


class PersistTaskSettings(Effect, tag="p_task_settings", frozen=True):
    task_id: str
    max_concurrency: int
    priority: int


class PersistVote(Effect, tag="p_vote", frozen=True):
    """A replica's result under verification, durable before the worker is told."""

    task_id: str
    chunk_index: int
    lease_id: int
    account_id: str
    worker_id: str
    digest: str
    output: Output
    at_ms: int


class PersistAck(Effect, tag="p_ack", frozen=True):
    """A replica acknowledged when its chunk's verdict came (the vote that decided it or
    made it fail), kept as neither vote nor result: remembered so that its worker's re-send
    after a restart is answered ``accepted`` again."""

    task_id: str
    chunk_index: int
    lease_id: int
    account_id: str
    worker_id: str
    digest: str
    at_ms: int


class PersistVotesCleared(Effect, tag="p_votes_cleared", frozen=True):
    task_id: str
    chunk_index: int | None  # None: every chunk of the task


class PersistTaskState(Effect, tag="p_task_state", frozen=True):
    task_id: str
    state: str
    finished_ms: int | None


class PersistResult(Effect, tag="p_result", frozen=True):
    task_id: str
    chunk_index: int
    lease_id: int
    account_id: str
    worker_id: str
    output: Output
    digest: str
    items: int
    at_ms: int


class PersistFailure(Effect, tag="p_failure", frozen=True):
    task_id: str
    chunk_index: int
    lease_id: int
    account_id: str
    worker_id: str
    error: str
    final: bool
    at_ms: int


class PersistTransfer(Effect, tag="p_transfer", frozen=True):
    """One balanced ledger transaction (entries sum to zero)."""

    id: int
    kind: str
    entries: list[tuple[str, int]]
    at_ms: int
    key: str | None
    task_id: str | None
    chunk: int | None
    lease_id: int | None
    memo: str


class PersistWithdrawal(Effect, tag="p_withdrawal", frozen=True):
    id: int
    account_id: str
    amount: int
    state: str
    created_ms: int
    updated_ms: int


PERSISTENT = (
    PersistTask, PersistTaskState, PersistResult, PersistFailure, PersistTransfer,
    PersistWithdrawal, PersistTaskSettings, PersistVote, PersistVotesCleared, PersistAck,
)
