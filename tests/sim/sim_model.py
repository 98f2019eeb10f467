"""The simulation's settings and records: parameters, tasks, jobs, workers, connections, stats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import CoreConfig
from coordinator.core.events import Event
from coordinator.core.state import worker_key
from coordinator.core.trust import TrustConfig
from schema.worker import PROTOCOL_VERSION, CoordinatorMessage

# No rate limits or quarantine here: the drain and deadlock checks assume every live worker
# can take work. Fault attribution has its own tests (tests/core/test_rules_trust.py).
CONFIG = CoreConfig(trust=TrustConfig(rate_limit_blame=10**9, quarantine_blame=10**9,
                                      invalid_quarantine=10**9))
TICK_MS = 250
REQUIREMENTS = ["gpu", "python>=3.10", "mem_gb>=8", "region!=eu"]
ALL_CAPS = ["gpu", "python=3.12", "mem_gb=64", "region=us"]  # meets every requirement above

Build = Callable[[int, int], Event]  # (eid, at_ms) -> event; the runtime stamps both


class SimFailure(AssertionError):
    pass


class RetryDeadlock(SimFailure):
    """Chunks with attempts left that every live capable worker has failed once, never retried
    (the bug fixed in 7e0ad06: each such worker deferred the chunk to another)."""


class _Close:
    """The close frame of a session the coordinator ends."""


CLOSE = _Close()
Down = CoordinatorMessage | fx.AssignChunk | _Close


@dataclass(frozen=True)
class Params:
    chaos_ms: int = 40_000  # how long workers, network and customers misbehave
    drain_ms: int = 30_000  # then everyone is reliable; a drain this long without progress fails
    drain_max_ms: int = 900_000  # and no drain lasts longer than this
    workers: tuple[int, int] = (10, 30)  # initial worker count range
    crash_every_ms: int = 12_000  # mean time between coordinator crashes during chaos
    fresh_drain_workers: int = 2  # reliable newcomers that meet every requirement, so no task
    # is left without a capable worker at the end
    fail_rates: tuple[float, ...] = (0.0, 0.0, 0.05, 0.2, 0.5)  # a worker draws one
    all_caps: bool = False  # every worker can take every task
    membership_changes: bool = True  # workers join and leave during chaos
    drain_reliable: bool = True  # workers stop failing chunks for the drain


@dataclass(frozen=True)
class Spec:
    task_id: str
    items: int
    chunk_size: int
    chunks: int

    def items_in(self, chunk: int) -> int:
        return min(self.chunk_size, self.items - chunk * self.chunk_size)


@dataclass
class Job:
    lease_id: int
    task_id: str
    chunk: int
    items: int
    outcome: str  # ok | fail | fatal | bad | hang
    reply: tuple[str, Any] | None = None  # ("result", bytes) or ("fail", (error, retryable))
    zombie: bool = False  # revoked, but this worker sends its result anyway


@dataclass
class Conn:
    id: str
    worker: SimWorker
    gen: int  # the coordinator incarnation this connection reached
    alive: bool = True
    welcomed: bool = False
    up_at: int = 0  # the last scheduled delivery each way, to keep per-session order
    down_at: int = 0


@dataclass
class SimWorker:
    account: str
    worker_id: str
    slots: int
    ms_per_item: int
    fail_rate: float
    bad_rate: float
    hang_rate: float
    zombie_rate: float
    caps: list[str]
    prefetch: int = 0  # leases held beyond the slots (jobs here all run at once)
    protocol: int = PROTOCOL_VERSION
    jobs: dict[int, Job] = field(default_factory=dict)
    conn: Conn | None = None
    gone: bool = False
    stalled_until: int = 0

    @property
    def key(self) -> str:
        return worker_key(self.account, self.worker_id)


@dataclass
class Stats:
    steps: int = 0
    sim_ms: int = 0
    crashes: int = 0
    results: int = 0
    accepted_seen: int = 0
    tasks: int = 0
    workers: int = 0
    seen: dict[str, int] = field(default_factory=dict)  # which paths the run went through

    def saw(self, what: str) -> None:
        self.seen[what] = self.seen.get(what, 0) + 1


def encode_output(n: int) -> bytes:
    return msgspec.msgpack.encode(list(range(n)))
