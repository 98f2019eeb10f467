"""Bodies of the REST API (JSON). The OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

TaskState = Literal["running", "paused", "completed", "failed", "cancelled"]
Verification = Literal["none", "spot", "quorum"]
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
    # scheduling and verification
    priority: Annotated[int, Meta(ge=1, le=10)] = 5  # weight among the owner's tasks
    verification: Verification = "none"
    quorum_k: Annotated[int, Meta(ge=1, le=10)] = 3  # quorum: replicas on distinct accounts
    quorum_m: Annotated[int, Meta(ge=1, le=10)] = 2  # quorum: how many must agree
    spot_per_mille: Annotated[int, Meta(ge=0, le=1000)] = 100  # spot: chunks in 1000 checked


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
    priority: int = 5
    verification: str = "none"
    quorum_k: int = 1
    quorum_m: int = 1
    spot_per_mille: int = 0
    chunks_verifying: int = 0  # chunks holding results that await agreement


class TaskPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``PATCH /api/tasks/{id}``: change a live task."""

    max_concurrency: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    priority: Annotated[int, Meta(ge=1, le=10)] | None = None


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


class ChunkAttempt(msgspec.Struct, frozen=True):
    """One failed attempt of a chunk (its history; the accepted one is the chunk's worker)."""

    at_ms: int
    worker: str
    error: str
    final: bool


class ChunkDetail(msgspec.Struct, frozen=True):
    """``GET /api/tasks/{id}/chunks/{index}``: one chunk, its history and a result preview."""

    chunk: ChunkInfo
    history: list[ChunkAttempt]
    preview: str | None = None  # the first outputs as JSON, cut to PREVIEW_CHARS


class ErrorBody(msgspec.Struct, frozen=True):
    """Every 4xx/5xx body: what went wrong and, where it helps, which field."""

    error: str
    field: str | None = None


class Health(msgspec.Struct, frozen=True):
    ok: bool
    version: str


# ---- wallets (amounts are integer credits in the smallest unit: 1234 is 12.34) --------------

Amount = Annotated[int, Meta(description="integer credits in the smallest unit (1234 = 12.34)")]
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=200)]


class DepositRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/wallet/deposit``. ``method``: ``direct`` (sandbox) or ``checkout``
    (Stripe); left out, sandbox mode deposits directly and Stripe mode starts a Checkout."""

    amount: Amount
    idempotency_key: IdempotencyKey | None = None
    method: Literal["direct", "checkout"] | None = None


class WithdrawRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/wallet/withdraw``: direct in sandbox mode, else pending an admin."""

    amount: Amount
    idempotency_key: IdempotencyKey | None = None


class FundRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/tasks/{id}/fund``: move ``amount`` from your wallet into the task."""

    amount: Amount


class Wallet(msgspec.Struct, frozen=True):
    account_id: str
    balance: int  # what can be spent or withdrawn now
    pending_withdrawals: int  # held until an admin approves or rejects
    in_escrow: int  # in the escrow of your running tasks
    earned: int  # credited for accepted chunks, ever
    sandbox: bool  # direct deposits and withdrawals are on
    stripe: bool  # deposits through Stripe Checkout are on


class DepositResult(msgspec.Struct, frozen=True):
    """A direct deposit (``balance`` is the new balance) or a started Checkout (pay at
    ``checkout_url``; the wallet is credited when Stripe confirms the payment)."""

    amount: int
    balance: int | None = None
    checkout_url: str | None = None
    session_id: str | None = None


class WithdrawResult(msgspec.Struct, frozen=True):
    id: int
    amount: int
    state: Literal["done", "pending"]
    balance: int
    pending_withdrawals: int


class Transaction(msgspec.Struct, frozen=True):
    """One entry on your wallet (or your pending-withdrawals account), with its cause."""

    id: int  # the transfer's id (a transfer may show twice: wallet and pending)
    kind: Annotated[str, Meta(description=(
        "deposit, withdrawal, withdrawal_hold, withdrawal_rejected, fund, refund, payout"))]
    account: Literal["wallet", "pending"]
    amount: int  # signed: what this entry added to (or took from) the account
    at_ms: int
    task_id: str | None = None
    chunk: int | None = None
    memo: str = ""


class TransactionPage(msgspec.Struct, frozen=True):
    transactions: list[Transaction]  # newest first
    next_offset: int | None = None


class TaskEarnings(msgspec.Struct, frozen=True):
    task_id: str
    chunks: int
    credited: int


class Earnings(msgspec.Struct, frozen=True):
    tasks: list[TaskEarnings]
    chunks: int
    total: int


class WithdrawalInfo(msgspec.Struct, frozen=True):
    id: int
    account_id: str
    amount: int
    state: Literal["pending", "approved", "rejected"]
    created_ms: int


class WithdrawalList(msgspec.Struct, frozen=True):
    withdrawals: list[WithdrawalInfo]


class LedgerSummary(msgspec.Struct, frozen=True):
    """Admin: where the money is. ``wallets + escrow + pending + platform`` equals
    ``deposited - withdrawn``."""

    wallets: int
    escrow: int
    pending: int
    platform: int
    deposited: int
    withdrawn: int


class WebhookAck(msgspec.Struct, frozen=True):
    received: bool
    credited: bool = False  # False also when this event was credited before (a re-delivery)


# ---- API tokens and the audit log ------------------------------------------------------------

TOKEN_LABEL_CHARS_MAX = 100
TokenState = Literal["active", "expired", "revoked"]


class TokenCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/tokens``: a new token for your account (an admin may name another)."""

    label: Annotated[str, Meta(min_length=1, max_length=TOKEN_LABEL_CHARS_MAX,
                               description="where the token is used, e.g. 'laptop'")]
    expires_in_s: Annotated[int, Meta(ge=1, description=(
        "lifetime in seconds, at most the coordinator's TN_TOKEN_LIFETIME_MAX_S; left out: "
        "that maximum (or no expiry when it is 0). Never past the expiry of the token the "
        "request is made with (or the token its browser signed in with): a longer lifetime is "
        "cut to it, and the response's expires_ms says so"))] | None = None
    account: Annotated[str, Meta(min_length=1, max_length=200, description=(
        "admins: the name of the account to issue the token for"))] | None = None


class TokenCreated(msgspec.Struct, frozen=True):
    """The new token: ``token`` is shown this once and never again (only its hash is kept)."""

    id: str
    token: str
    label: str
    account: str  # the owner's name
    created_ms: int
    expires_ms: int | None = None  # at most the expiry of the token that created it


class TokenInfo(msgspec.Struct, frozen=True):
    """A token as listed: its public id, never the token or its hash."""

    id: str
    label: str
    account: str  # the owner's name
    state: TokenState
    created_ms: int
    expires_ms: int | None = None
    revoked_ms: int | None = None


class TokenList(msgspec.Struct, frozen=True):
    tokens: list[TokenInfo]  # live first, then the newest revoked or expired


class AuditEntry(msgspec.Struct, frozen=True):
    """One audited action: who (``actor_name``; ``console`` or ``stripe`` when no account),
    what, on what, from where, and whether it was done or refused."""

    id: int
    at_ms: int
    actor_id: str | None
    actor_name: str
    action: str
    target: str
    detail: dict[str, Any]
    ip: str
    outcome: Literal["ok", "refused"]


class AuditPage(msgspec.Struct, frozen=True):
    entries: list[AuditEntry]  # newest first
    next_before_id: int | None = None  # pass as before_id for the next (older) page
