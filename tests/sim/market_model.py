"""The market simulation's settings and records: outputs, tasks, workers, fairness, stats."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from coordinator.core.core import CoreConfig
from coordinator.core.events import Event
from coordinator.core.state import worker_key
from coordinator.core.trust import TrustConfig

# Trust as shipped, but quarantines short enough to end (and be noticed ending) in a run.
CONFIG = CoreConfig(trust=TrustConfig(quarantine_ms=15_000))
SAMPLE_MS = 1000  # the fairness pair is sampled every simulated second
WINDOW = 60  # samples: fairness is judged over each minute
FAIR_TOLERANCE = 0.05  # each of the pair holds 50 % +- 5 % of the pair's slots over a minute
PRIORITY_TOLERANCE = 0.05  # fair-a's priority-8 task holds 80 % +- 5 % of fair-a's share
CUSTOMERS = ("c1", "c2", "c3", "c4")
CAPS_POOL = ("gpu", "mem_gb=32", "region=us")
REQUIREMENTS = ("gpu", "mem_gb>=16", "python>=3.11")
Build = Callable[[int, int], Event]


def event(kind: type[Event], *args: Any, **kw: Any) -> Build:
    """An event of ``kind`` with these fields, once the clock stamps it (eid, at_ms)."""
    return lambda eid, at: kind(eid, at, *args, **kw)


@dataclass(frozen=True)
class Params:
    workers: int = 200
    chaos_ms: int = 70_000  # customers and connections misbehave; the pair is sampled
    drain_max_ms: int = 120_000  # then everyone is honest and reliable until all tasks end
    liars: float = 0.1  # the fraction of dishonest workers
    shared_accounts: float = 0.2  # workers that share an account with another worker


def right_output(task_id: str, chunk: int, items: int) -> bytes:
    seed = int.from_bytes(hashlib.sha256(f"{task_id}/{chunk}".encode()).digest()[:4], "big")
    return msgspec.msgpack.encode([seed + i for i in range(items)])


def wrong_output(task_id: str, chunk: int, items: int, lease_id: int) -> bytes:
    """A wrong answer of the right length, different for every lease (no collusion)."""
    return msgspec.msgpack.encode([-lease_id - i for i in range(items)])


@dataclass(frozen=True)
class Spec:
    task_id: str
    owner: str
    items: int
    chunk_size: int
    chunks: int
    verification: str
    price: int
    poison: frozenset[int]

    def items_in(self, chunk: int) -> int:
        return min(self.chunk_size, self.items - chunk * self.chunk_size)


@dataclass
class Job:
    lease_id: int
    task_id: str
    chunk: int
    reply: tuple[str, Any] | None = None


@dataclass
class Conn:
    id: str
    worker: MarketWorker
    alive: bool = True
    welcomed: bool = False
    up_at: int = 0
    down_at: int = 0
    last_up: int = 0


@dataclass
class MarketWorker:
    account: str
    worker_id: str
    slots: int
    prefetch: int
    ms_per_item: int
    fail_rate: float
    lie_rate: float
    flaky_net: bool
    caps: list[str]
    jobs: dict[int, Job] = field(default_factory=dict)
    conn: Conn | None = None
    gone: bool = False
    stalled_until: int = 0
    reliable: bool = False  # never failed a good chunk nor lied, from its first day

    def __post_init__(self) -> None:
        self.reliable = self.fail_rate == 0 and self.lie_rate == 0

    @property
    def key(self) -> str:
        return worker_key(self.account, self.worker_id)


@dataclass
class Fairness:
    """Chunks in flight of the pair, one sample per simulated second."""

    samples: list[tuple[int, int, int]] = field(default_factory=list)  # (a-hi, a-lo, b)

    def worst(self) -> dict[str, float]:
        inst = max((abs(hi + lo - b) / (2 * (hi + lo + b)) for hi, lo, b in self.samples
                    if hi + lo + b), default=0.0)
        chunks = max((abs(hi + lo - b) for hi, lo, b in self.samples), default=0)
        window = prio = 0.0
        for i in range(len(self.samples) - WINDOW + 1):
            part = self.samples[i:i + WINDOW]
            hi, lo, b = (sum(s[j] for s in part) for j in range(3))
            window = max(window, abs(hi + lo - b) / (2 * (hi + lo + b)))
            prio = max(prio, abs(hi / (hi + lo) - 0.8))
        mean = sum(hi + lo + b for hi, lo, b in self.samples) / max(1, len(self.samples))
        return {"window": window, "instant": inst, "chunks": chunks, "priority": prio,
                "pair_slots": mean, "samples": len(self.samples)}


@dataclass
class Stats:
    steps: int = 0
    sim_ms: int = 0
    workers: int = 0
    tasks: int = 0
    results: int = 0
    corrupted_sent: int = 0
    wrong_accepted: Counter[str] = field(default_factory=Counter)  # by verification
    poison_failed: int = 0
    false_poison: int = 0  # good chunks that failed on 3 flaky workers in a row
    quarantined: int = 0
    seen: Counter[str] = field(default_factory=Counter)
    fairness: dict[str, float] = field(default_factory=dict)
