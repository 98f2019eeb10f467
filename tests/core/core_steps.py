"""Helpers shared by the core's hand-built event tests (test_core_*.py).

Events are built by hand, eid and at_ms written out. Every event goes through ``step``,
which also checks the core's invariants afterwards.
Defaults: heartbeat 2000 ms, lease 3500 ms, disconnect grace 1000 ms, epoch 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import Event, ResultIn, SessionHello, TaskSubmitted
from coordinator.core.invariants import check_invariants
from schema.worker import PROTOCOL_VERSION

CFG = CoreConfig()
HB, LEASE, GRACE = CFG.heartbeat_ms, CFG.lease_ms, CFG.disconnect_grace_ms
ACCT = "acme"


def lid(n: int, epoch: int = 1) -> int:
    """The n-th lease id drawn by a core booted with ``epoch``."""
    return (epoch << 32) | n


def submit(
    eid: int, at: int, task_id: str = "t1", *, items: int = 8, chunk_size: int = 2,
    max_concurrency: int = 100, max_attempts: int = 3, chunk_timeout_ms: int = 60_000,
    requirements: Sequence[str] = (),
) -> TaskSubmitted:
    chunks = -(-items // chunk_size)
    return TaskSubmitted(
        eid, at, task_id, "alice", f"name of {task_id}", chunks, items, chunk_size,
        max_concurrency, max_attempts, chunk_timeout_ms, list(requirements), f"code-{task_id}",
    )


def hello(
    eid: int, at: int, session_id: str, worker_id: str = "w1", *, slots: int = 1,
    held: Sequence[int] = (), caps: Sequence[str] = (), protocol: int = PROTOCOL_VERSION,
    prefetch: int = 0,
) -> SessionHello:
    return SessionHello(
        eid, at, session_id, ACCT, worker_id, list(caps), slots, list(held), protocol,
        prefetch=prefetch,
    )


def out(n: int) -> bytes:
    return msgspec.msgpack.encode(list(range(n)))


def result(eid: int, at: int, session_id: str, lease_id: int, n: int = 2) -> ResultIn:
    return ResultIn(eid, at, session_id, lease_id, out(n), f"digest-{lease_id}")


def step(core: Core, event: Event) -> list[fx.Effect]:
    effects = core.handle(event)
    check_invariants(core)
    for e in effects:
        assert e.cause == event.eid, f"{e!r} does not repeat its cause {event.eid}"
    return effects


def assign(
    eid: int, session_id: str, lease: int, chunk: int, task_id: str = "t1", *,
    attempt: int = 1, timeout: int = 60_000,
) -> fx.AssignChunk:
    return fx.AssignChunk(
        eid, session_id, lease, task_id, chunk, f"code-{task_id}", timeout, attempt,
    )


def assigns(effects: list[fx.Effect]) -> list[tuple[str, str, int]]:
    """(session, task, chunk) of every assignment, in order."""
    return [
        (e.session_id, e.task_id, e.chunk_index) for e in effects if isinstance(e, fx.AssignChunk)
    ]


def assign_effects(effects: list[fx.Effect]) -> list[fx.AssignChunk]:
    return [e for e in effects if isinstance(e, fx.AssignChunk)]


def of(effects: list[fx.Effect], kind: type[fx.Effect]) -> list[fx.Effect]:
    return [e for e in effects if isinstance(e, kind)]


def sent(effects: list[fx.Effect]) -> list[tuple[str, object]]:
    return [(e.session_id, e.message) for e in effects if isinstance(e, fx.Send)]


def lease_of(core: Core, task_id: str, chunk: int) -> int:
    return core.tasks[task_id].lease_of_chunk[chunk]
