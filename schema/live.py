"""Messages of the live socket (``/ws/live``): JSON text frames, for dashboards and the CLI.

The client subscribes to topics; the coordinator answers each with a snapshot and then sends
coalesced updates (at most ``live_flush_ms`` apart) for as long as it stays subscribed.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schema.rest import TaskInfo, WithdrawalInfo

Topic = Annotated[str, Meta(min_length=1, max_length=200)]


class _Live(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class Subscribe(_Live, tag="subscribe", frozen=True):
    """Topics: ``task:<id>`` (one task), ``tasks`` (all of the caller's tasks), and the
    dashboard's views: ``grid:<id>`` (a task's page: ``task_detail`` and ``chunks``),
    ``workers`` (the caller's own worker sessions), ``wallet`` (the caller's balances),
    ``platform`` (admins only)."""

    topics: Annotated[list[Topic], Meta(min_length=1, max_length=64)]


class Unsubscribe(_Live, tag="unsubscribe", frozen=True):
    topics: Annotated[list[Topic], Meta(min_length=1, max_length=64)]


LiveClientMessage = Subscribe | Unsubscribe


class TaskUpdate(_Live, tag="task", frozen=True):
    """The current state of one task (sent as the snapshot and as each coalesced update)."""

    task: TaskInfo


class LiveError(_Live, tag="error", frozen=True):
    reason: str
    topic: str | None = None


# ---- the dashboard's views (each: a snapshot on subscribe, then coalesced updates) ---------


class ChunkRange(msgspec.Struct, frozen=True, array_like=True):
    """``states[i]`` is chunk ``offset + i``'s state: 0 pending, 1 leased, 2 done, 3 failed
    (bytes: base64 in JSON)."""

    offset: int
    states: bytes


class ChunkStates(_Live, tag="chunks", frozen=True):
    """Chunk states of a task (topic ``grid:<id>``) that changed in update ``seq``.

    The whole array is ``GET /api/tasks/{id}/chunk-states`` (one byte per chunk); its
    ``X-TN-Chunk-Seq`` header is the last update it includes: apply only later ones.
    ``refetch``: fetch the array again (sent on subscribe, and when too much changed).
    """

    task_id: str
    seq: int
    ranges: list[ChunkRange] = []
    refetch: bool = False


class Assignment(msgspec.Struct, frozen=True):
    """A chunk being worked on: its lease, the worker, its progress in items."""

    lease_id: int
    task_id: str
    chunk: int
    worker_id: str
    done: int = 0
    total: int = 0
    started_ms: int = 0


class Sample(msgspec.Struct, frozen=True, array_like=True):
    """A point of a task's burn-down: at ``at_ms``, ``done`` chunks accepted, ``spent``."""

    at_ms: int
    done: int
    spent: int


class TaskDetail(_Live, tag="task_detail", frozen=True):
    """What a task's own page (topic ``grid:<id>``) shows beyond ``task``: its active
    assignments (the first ``ASSIGNMENTS_SHOWN`` by lease) and, in the snapshot only, its
    history."""

    task_id: str
    now_ms: int
    assignments: list[Assignment]
    assignments_total: int
    history: list[Sample] | None = None


class TrustInfo(msgspec.Struct, frozen=True):
    trusted: bool = False  # validated often enough that spot checks thin out
    streak: int = 0
    valid: int = 0
    invalid: int = 0
    limited: str | None = None  # quarantined or rate-limited: why


class WorkerSessionInfo(msgspec.Struct, frozen=True):
    worker_id: str
    slots: int
    prefetch: int
    capabilities: list[str]
    sandbox: list[str]
    running: list[Assignment]
    trust: TrustInfo
    idle_reasons: list[str] = []  # when it runs nothing: why


class WorkersView(_Live, tag="workers", frozen=True):
    """The caller's own live worker sessions (topic ``workers``)."""

    now_ms: int
    sessions: list[WorkerSessionInfo]
    sessions_total: int


class WalletView(_Live, tag="wallet", frozen=True):
    """The caller's balances (topic ``wallet``); sent when one changes."""

    balance: int
    pending_withdrawals: int
    in_escrow: int
    now_ms: int


class RatePoint(msgspec.Struct, frozen=True, array_like=True):
    at_ms: int
    chunks_per_s: int


class QueueDepth(msgspec.Struct, frozen=True):
    task_id: str
    name: str
    owner: str
    pending: int
    leased: int
    max_concurrency: int


class PlatformWorker(msgspec.Struct, frozen=True):
    account_id: str
    worker_id: str
    slots: int
    running: int
    last_seen_ms: int


class PlatformView(_Live, tag="platform", frozen=True):
    """Admins (topic ``platform``), about once a second: workers, throughput, queues, money.
    Lists are cut to their first entries; ``*_total`` says how many there are."""

    now_ms: int
    workers_total: int
    slots_total: int
    leases_active: int
    workers: list[PlatformWorker]
    rate: list[RatePoint]
    tasks_running: int
    queue: list[QueueDepth]
    revenue: int
    deposited: int
    withdrawn: int
    withdrawals: list[WithdrawalInfo]
    withdrawals_total: int


LiveServerMessage = (
    TaskUpdate | LiveError | ChunkStates | TaskDetail | WorkersView | WalletView | PlatformView
)
