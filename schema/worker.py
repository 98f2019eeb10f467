"""Messages of the worker session (MessagePack over binary WebSocket frames).

One tagged, frozen Struct per message type. ``WorkerMessage`` is what a worker may send,
``CoordinatorMessage`` what the coordinator sends back. New fields always get defaults so
older peers keep working; ``PROTOCOL_VERSION`` moves only on incompatible changes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Raw

PROTOCOL_VERSION = 1

Id = Annotated[str, Meta(min_length=1, max_length=128)]
LeaseId = Annotated[int, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]
Capability = Annotated[str, Meta(min_length=1, max_length=200)]


class _Msg(msgspec.Struct, frozen=True, tag_field="type"):
    pass


# ---- worker -> coordinator ------------------------------------------------------------


class Hello(_Msg, tag="hello", frozen=True):
    """First message of a session. The token is checked before anything else happens."""

    worker_id: Id
    token: Annotated[str, Meta(min_length=1, max_length=512)]
    protocol: int = PROTOCOL_VERSION
    capabilities: Annotated[list[Capability], Meta(max_length=64)] = []
    slots: Annotated[int, Meta(ge=1, le=256)] = 1
    prefetch: Annotated[int, Meta(ge=0, le=256)] = 0  # leases queued beyond the running ones
    held_leases: Annotated[list[LeaseId], Meta(max_length=1024)] = []
    sandbox: Annotated[list[Annotated[str, Meta(max_length=200)]], Meta(max_length=32)] = []


class Progress(_Msg, tag="progress", frozen=True):
    lease_id: LeaseId
    done: Count
    total: Count
    preview: Annotated[str, Meta(max_length=2000)] | None = None


class Heartbeat(_Msg, tag="heartbeat", frozen=True):
    leases: Annotated[list[LeaseId], Meta(max_length=1024)] = []


class Result(_Msg, tag="result", frozen=True):
    """A finished chunk. ``output`` is a MessagePack array with one value per item."""

    lease_id: LeaseId
    output: Raw
    digest: Annotated[str, Meta(max_length=128)] = ""


class Fail(_Msg, tag="fail", frozen=True):
    lease_id: LeaseId
    error: Annotated[str, Meta(max_length=8000)]
    retryable: bool = True


class WhyIdle(_Msg, tag="why_idle", frozen=True):
    """Ask why no work comes while slots are free; answered with ``idle``."""


WorkerMessage = Hello | Progress | Heartbeat | Result | Fail | WhyIdle


# ---- coordinator -> worker ------------------------------------------------------------


class Welcome(_Msg, tag="welcome", frozen=True):
    session: Id
    heartbeat_ms: int
    lease_ms: int
    resumed: list[LeaseId] = []
    dropped: list[LeaseId] = []


class Assign(_Msg, tag="assign", frozen=True):
    """A chunk pushed to a worker. ``items`` is a MessagePack array (sent as stored)."""

    lease_id: LeaseId
    task_id: Id
    chunk_index: Count
    code_ref: str
    items: Raw
    deadline_ms: int = 0
    attempt: int = 1


class Accepted(_Msg, tag="accepted", frozen=True):
    """The result is durably recorded. ``credited`` is what the worker was paid for it now;
    under verification payment follows when the chunk's replicas agree."""

    lease_id: LeaseId
    credited: int = 0


class Rejected(_Msg, tag="rejected", frozen=True):
    lease_id: LeaseId
    reason: str


class Revoke(_Msg, tag="revoke", frozen=True):
    lease_id: LeaseId
    reason: str


class Error(_Msg, tag="error", frozen=True):
    """A message the coordinator could not accept; the session survives unless told otherwise."""

    reason: str
    fatal: bool = False


class Idle(_Msg, tag="idle", frozen=True):
    reasons: list[str]


CoordinatorMessage = Welcome | Assign | Accepted | Rejected | Revoke | Error | Idle
