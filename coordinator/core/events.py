"""Events: everything that enters the core. Each carries its id (``eid``) and time (``at_ms``).

The runtime stamps both; the core never reads a clock or draws an id. Events are tagged
msgspec Structs so the journal can record them and replay can feed them back verbatim.
Secrets never appear here: sessions arrive already authenticated, as an account id.
"""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct, frozen=True, tag_field="ev", gc=False):
    """(``gc=False``: events hold no cycles; untracked, they cost the collector nothing.)"""

    eid: int
    at_ms: int


class Tick(Event, tag="tick", frozen=True):
    """The clock moved; expire leases and sessions that went silent."""


class EpochStarted(Event, tag="epoch", frozen=True):
    """A new epoch for lease ids (the store handed it out; it is larger than any before)."""

    epoch: int


class TaskSubmitted(Event, tag="task_submitted", frozen=True):
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
    price_per_chunk: int = 0
    budget: int = 0
    max_spend_per_minute: int = 0
    priority: int = 5
    verification: str = "none"
    quorum_k: int = 1
    quorum_m: int = 1
    spot_per_mille: int = 0
    salt: str = ""  # random, from the adapter: decides which chunks get spot checks


class TaskPause(Event, tag="task_pause", frozen=True):
    """Stop leasing; revoke the task's leases at once (their chunks return, uncharged)."""

    task_id: str


class TaskResume(Event, tag="task_resume", frozen=True):
    task_id: str


class TaskUpdate(Event, tag="task_update", frozen=True):
    """Change a live task's cap or priority; a lower cap lets running chunks finish."""

    task_id: str
    max_concurrency: int | None = None
    priority: int | None = None


class WhyIdleIn(Event, tag="why_idle", frozen=True):
    session_id: str


class TaskFund(Event, tag="task_fund", frozen=True):
    """Top up a task's escrow from its owner's wallet."""

    task_id: str
    amount: int


class Deposit(Event, tag="deposit", frozen=True):
    """Money in from the world (sandbox, Stripe, or a new account's starting credit).
    ``key`` makes it idempotent: a Stripe event id is credited once."""

    account_id: str
    amount: int
    key: str
    source: str


class Withdraw(Event, tag="withdraw", frozen=True):
    """Money out: ``direct`` leaves at once (sandbox); otherwise it waits for an admin."""

    account_id: str
    amount: int
    direct: bool
    key: str | None = None


class WithdrawalDecision(Event, tag="withdrawal_decision", frozen=True):
    withdrawal_id: int
    approve: bool


class TaskCancel(Event, tag="task_cancel", frozen=True):
    task_id: str
    reason: str = "cancelled by its owner"


class SessionHello(Event, tag="hello", frozen=True):
    session_id: str
    account_id: str
    worker_id: str
    capabilities: list[str]
    slots: int
    held_leases: list[int]
    protocol: int
    sandbox: list[str] = []
    prefetch: int = 0


class SessionClosed(Event, tag="closed", frozen=True):
    session_id: str
    reason: str = ""


class ProgressIn(Event, tag="progress", frozen=True):
    session_id: str
    lease_id: int
    done: int
    total: int


class HeartbeatIn(Event, tag="heartbeat", frozen=True):
    session_id: str


class ResultIn(Event, tag="result", frozen=True):
    session_id: str
    lease_id: int
    output: bytes
    digest: str


class FailIn(Event, tag="fail", frozen=True):
    session_id: str
    lease_id: int
    error: str
    retryable: bool


AnyEvent = (
    Tick
    | EpochStarted
    | TaskSubmitted
    | TaskCancel
    | TaskFund
    | TaskPause
    | TaskResume
    | TaskUpdate
    | WhyIdleIn
    | Deposit
    | Withdraw
    | WithdrawalDecision
    | SessionHello
    | SessionClosed
    | ProgressIn
    | HeartbeatIn
    | ResultIn
    | FailIn
)
