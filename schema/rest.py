"""Bodies of the REST API (JSON). The OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

TaskState = Literal["running", "completed", "failed", "cancelled"]
ChunkState = Literal["pending", "leased", "done", "failed"]

Requirement = Annotated[str, Meta(min_length=1, max_length=200)]
MONEY_MAX = 10**15  # a hard ceiling on any amount; the coordinator's own limit is lower


class TaskSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``spec`` part of ``POST /api/tasks``."""

    chunk_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    max_concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    requirements: Annotated[list[Requirement], Meta(max_length=32)] = []
    chunk_timeout_ms: Annotated[int, Meta(ge=100, le=86_400_000)] = 300_000
    name: Annotated[str, Meta(max_length=200)] = ""
    # money, in integer credits (the smallest unit); 0 price: a free task
    budget: Annotated[int, Meta(ge=0, le=MONEY_MAX)] = 0
    price_per_chunk: Annotated[int, Meta(ge=0, le=MONEY_MAX)] = 0
    max_spend_per_minute: Annotated[int, Meta(ge=0, le=MONEY_MAX)] = 0


class TaskInfo(msgspec.Struct, frozen=True):
    id: str
    name: str
    owner: str
    state: TaskState
    chunks_total: int
    chunks_pending: int
    chunks_leased: int
    chunks_done: int
    chunks_failed: int
    items_total: int
    items_done: int
    max_concurrency: int
    max_attempts: int
    chunk_size: int
    requirements: list[str]
    created_ms: int
    finished_ms: int | None = None
    # money (integer credits)
    price_per_chunk: int = 0
    budget: int = 0
    spent: int = 0  # paid for accepted chunks
    reserved: int = 0  # the price of the chunks in flight
    remaining: int = 0  # escrow beyond what is reserved
    funds_needed: int = 0  # escrow short of finishing; >0 with no leases: "needs funds"
    needs_funds: bool = False  # running, but cannot pay for its next chunk
    burn_per_minute: int = 0  # paid in the last minute
    chunks_per_minute: int = 0
    eta_ms: int | None = None  # estimated time to finish at the last minute's pace
    cost_to_finish: int = 0  # price of the chunks not yet accepted
    max_spend_per_minute: int = 0


class TaskCreated(msgspec.Struct, frozen=True):
    id: str
    chunks_total: int
    items_total: int


class TaskList(msgspec.Struct, frozen=True):
    tasks: list[TaskInfo]


class ChunkInfo(msgspec.Struct, frozen=True):
    index: int
    state: ChunkState
    attempts: int
    worker: str | None = None
    lease_id: int | None = None
    error: str | None = None


class ChunkPage(msgspec.Struct, frozen=True):
    chunks: list[ChunkInfo]
    next_offset: int | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """Every 4xx/5xx body: what went wrong and, where it helps, which field."""

    error: str
    field: str | None = None


class Health(msgspec.Struct, frozen=True):
    ok: bool
    version: str
