"""The money machine's model: its accounts and workers, the Worker it tracks, and helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from hypothesis import strategies as st

from coordinator.core import effects as fx
from coordinator.core.events import Event, HeartbeatIn
from coordinator.core.lifecycle import TERMINAL_TASK_STATES
from coordinator.core.state import worker_key

CUSTOMERS = ("c0", "c1")
WORKERS = (("wa0", "w0"), ("wa0", "w1"), ("wa1", "w2"), ("wa2", "w3"), ("c1", "w4"))  # c1 works
ACCOUNTS = ("c0", "c1", "wa0", "wa1", "wa2")
VERIFY = {  # verification, quorum_k, quorum_m, spot_per_mille
    "none": ("none", 1, 1, 0), "spot": ("spot", 1, 1, 500), "spot all": ("spot", 1, 1, 1000),
    "2 of 2": ("quorum", 2, 2, 0), "2 of 3": ("quorum", 3, 2, 0),
}
GROUP_MAX = 4  # turns one group commit holds at most
TERMINAL = frozenset(s.label for s in TERMINAL_TASK_STATES)
PICK = st.integers(0, 1 << 16)  # an index into whatever the model holds, modulo its size
Build = Callable[[int, int], Event]
E = TypeVar("E", bound=fx.Effect)


@dataclass
class Worker:
    account: str
    worker_id: str
    session: str | None = None  # its live connection, as the worker sees it
    slots: int = 1
    prefetch: int = 0
    held: dict[int, tuple[str, int]] = field(default_factory=dict)  # lease -> task, chunk
    answered: set[int] = field(default_factory=set)  # held leases it sent an answer for
    sent: dict[int, bytes] = field(default_factory=dict)  # every result it sent, to re-send

    @property
    def key(self) -> str:
        return worker_key(self.account, self.worker_id)

    def forget(self, lease_id: int) -> None:
        self.held.pop(lease_id, None)
        self.answered.discard(lease_id)


def output(n: int) -> bytes:
    return msgspec.msgpack.encode(list(range(n)))


def of_type(effects: list[fx.Effect], kind: type[E]) -> list[E]:
    return [e for e in effects if isinstance(e, kind)]


def heartbeat(sid: str) -> Build:
    return lambda eid, at: HeartbeatIn(eid, at, sid)


def named(effects: list[fx.Effect]) -> set[int]:
    """Leases whose result these effects persist: accepted, paid, or a vote kept."""
    kept = {e.lease_id for e in effects
            if isinstance(e, fx.PersistResult | fx.PersistVote | fx.PersistAck)}
    return kept | {e.lease_id for e in effects if isinstance(e, fx.PersistTransfer)
                   and e.kind == "payout" and e.lease_id is not None}


def nonzero(balances: dict[str, int]) -> dict[str, int]:
    return {a: b for a, b in balances.items() if b}


class ResendBug(AssertionError):
    """RESEND_BUG (in test_money_props.py), seen."""


class CapBug(AssertionError):
    """CAP_BUG (in test_money_props.py), seen."""
