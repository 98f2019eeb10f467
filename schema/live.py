"""Messages of the live socket (``/ws/live``): JSON text frames, for dashboards and the CLI.

The client subscribes to topics; the coordinator answers each with a snapshot and then sends
coalesced updates (at most ``live_flush_ms`` apart) for as long as it stays subscribed.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schema.rest import TaskInfo

Topic = Annotated[str, Meta(min_length=1, max_length=200)]


class _Live(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class Subscribe(_Live, tag="subscribe", frozen=True):
    """Topics: ``task:<id>`` (one task), ``tasks`` (all of the caller's tasks)."""

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


LiveServerMessage = TaskUpdate | LiveError
