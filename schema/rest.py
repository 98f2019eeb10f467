"""Bodies of the REST API (JSON). The OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

TaskState = Literal["running", "completed", "failed", "cancelled"]
ChunkState = Literal["pending", "leased", "done", "failed"]

Requirement = Annotated[str, Meta(min_length=1, max_length=200)]


class TaskSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``spec`` part of ``POST /api/tasks``."""

    chunk_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    max_concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    requirements: Annotated[list[Requirement], Meta(max_length=32)] = []
    chunk_timeout_ms: Annotated[int, Meta(ge=100, le=86_400_000)] = 300_000
    name: Annotated[str, Meta(max_length=200)] = ""


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
