"""Every limit and knob of the coordinator, with its unit last in the name.

Each field can be set from the environment as ``TN_<FIELD>`` (upper case), e.g.
``TN_HEARTBEAT_MS=1000``; the command line sets the few that operators change most.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.core.core import CoreConfig
from coordinator.uploads import UploadLimits


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("storage")
    host: str = "127.0.0.1"
    port: int = 8000
    demo: bool = False
    # sessions and leases
    heartbeat_ms: int = 2000
    lease_ms: int = 3500
    disconnect_grace_ms: int = 1000
    tick_ms: int = 250
    hello_timeout_ms: int = 10_000
    # messages
    ws_message_bytes_max: int = 32 << 20  # larger frames get an error reply; 2x closes (1009)
    bad_messages_max: int = 10  # malformed messages tolerated per session before a 1008 close
    session_queue_max: int = 4096  # outbound messages buffered per worker session
    live_queue_max: int = 256  # outbound frames buffered per live subscriber; then dropped
    live_flush_ms: int = 100  # live updates are coalesced to at most one per this period
    # rate limits and session caps (coordinator/limits.py); a rate of 0 turns it off
    rest_requests_per_s: int = 100  # per account (tokens and browsers); per address if none
    rest_requests_burst: int = 400  # requests at once above the rate; past it 429 + Retry-After
    rest_keys_max: int = 100_000  # callers tracked; the least recently seen is forgotten
    worker_messages_per_s: int = 10_000  # per worker session; past it its socket is read slower
    worker_messages_burst: int = 20_000
    live_messages_per_s: int = 10  # per live session (subscribe/unsubscribe); past it 1008
    live_messages_burst: int = 50
    worker_sessions_per_account_max: int = 256  # one token may run a swarm; past it 1008
    live_sessions_per_account_max: int = 32  # dashboards open at once per account; past it 1008
    # money
    platform_fee_bps: int = 1000  # fee per accepted chunk, basis points (PLATFORM_FEE_PERCENT)
    wallet_sandbox_enabled: bool = True  # direct deposits/withdrawals (env WALLET_SANDBOX_ENABLED)
    dev_initial_wallet: int = 0  # credits a new account starts with in sandbox mode
    money_amount_max: int = 10**12  # the largest amount any request may name
    stripe_secret_key: str = ""  # env STRIPE_SECRET_KEY
    stripe_webhook_secret: str = ""  # env STRIPE_WEBHOOK_SECRET
    stripe_api_base: str = ""  # env STRIPE_API_BASE: a stand-in server for tests
    public_url: str = ""  # where Stripe Checkout sends the browser back (env TN_PUBLIC_URL)
    # API tokens and the audit log (coordinator/http_tokens.py, coordinator/audit.py)
    token_lifetime_max_s: int = 365 * 86_400  # longest lifetime a new token gets; 0: no limit
    tokens_per_account_max: int = 100  # live (unrevoked, unexpired) tokens per account
    audit_rows_max: int = 1_000_000  # the oldest audit rows are deleted past this count
    audit_age_days_max: int = 400  # and past this age; 0: only the count limits them
    audit_refusals_per_minute_max: int = 20  # refused rows per action and source; 0: all
    # recording (see coordinator/recorder.py)
    journal_enabled: bool = True
    journal_segment_bytes: int = 64 << 20  # a new segment (with a snapshot) past this size
    journal_bytes_max: int = 1 << 30  # oldest segments are deleted past this total
    journal_flush_ms: int = 200  # the journal is written at least this often (0: every turn)
    session_logs_enabled: bool = True
    session_logs_bytes_max: int = 256 << 20
    session_log_payload_bytes_max: int = 4096  # larger items/outputs are logged as digests
    session_log_buffer_bytes_max: int = 64 << 20  # frames waiting for the log writer
    # persistence
    commit_batch_max: int = 4096  # events handled per turn before a group commit
    # uploads
    request_bytes_max: int = 600 << 20
    uploads: UploadLimits = field(default_factory=UploadLimits)

    @property
    def core(self) -> CoreConfig:
        return CoreConfig(
            heartbeat_ms=self.heartbeat_ms,
            lease_ms=self.lease_ms,
            disconnect_grace_ms=self.disconnect_grace_ms,
            fee_bps=self.platform_fee_bps,
        )

    @property
    def stripe_enabled(self) -> bool:
        return bool(self.stripe_secret_key and self.stripe_webhook_secret)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "coordinator.sqlite3"


def percent_to_bps(raw: str) -> int:
    """'2.5' -> 250, exactly (no floats); at most two decimals, from 0 to 100."""
    whole, _, frac = raw.strip().partition(".")
    if not whole.isdigit() or (frac and (not frac.isdigit() or len(frac) > 2)):
        raise ValueError(f"{raw!r} is not a percentage with at most two decimals")
    bps = int(whole) * 100 + int(frac.ljust(2, "0") or "0")
    if bps > 10_000:
        raise ValueError(f"{raw!r} is over 100 %")
    return bps


def _plain_env(env: dict[str, str]) -> dict[str, object]:
    """The variables the product documents without the TN_ prefix."""
    out: dict[str, object] = {}
    try:
        if "PLATFORM_FEE_PERCENT" in env:
            out["platform_fee_bps"] = percent_to_bps(env["PLATFORM_FEE_PERCENT"])
        if "DEV_INITIAL_WALLET" in env:
            value = int(env["DEV_INITIAL_WALLET"])
            if value < 0:
                raise ValueError("must not be negative")
            out["dev_initial_wallet"] = value
    except ValueError as exc:
        raise SystemExit(f"bad PLATFORM_FEE_PERCENT or DEV_INITIAL_WALLET: {exc}") from None
    if "WALLET_SANDBOX_ENABLED" in env:
        out["wallet_sandbox_enabled"] = env["WALLET_SANDBOX_ENABLED"].strip().lower() in (
            "1", "true", "yes", "on")
    for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_API_BASE"):
        if env.get(name):
            out[name.lower()] = env[name]
    return out


def from_env(base: Config, env: dict[str, str] | None = None) -> Config:
    """Override fields of ``base`` from ``TN_*`` variables; a bad value names the variable."""
    env = dict(os.environ) if env is None else env
    changes: dict[str, object] = {}
    for f in dataclasses.fields(base):
        raw = env.get(f"TN_{f.name.upper()}")
        if raw is None or f.name == "uploads":
            continue
        current = getattr(base, f.name)
        try:
            if isinstance(current, bool):
                changes[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(current, int):
                changes[f.name] = int(raw)
            elif isinstance(current, Path):
                changes[f.name] = Path(raw)
            else:
                changes[f.name] = raw
        except ValueError:
            raise SystemExit(
                f"TN_{f.name.upper()}={raw!r} is not a valid {type(current).__name__}; "
                "fix or unset it"
            ) from None
    changes.update(_plain_env(env))
    uploads = base.uploads
    for f in dataclasses.fields(uploads):
        raw = env.get(f"TN_{f.name.upper()}")
        if raw is not None:
            try:
                uploads = dataclasses.replace(uploads, **{f.name: int(raw)})
            except ValueError:
                raise SystemExit(f"TN_{f.name.upper()}={raw!r} must be a whole number") from None
    return dataclasses.replace(base, **changes, uploads=uploads)  # type: ignore[arg-type]
