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
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "coordinator.sqlite3"


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
    uploads = base.uploads
    for f in dataclasses.fields(uploads):
        raw = env.get(f"TN_{f.name.upper()}")
        if raw is not None:
            try:
                uploads = dataclasses.replace(uploads, **{f.name: int(raw)})
            except ValueError:
                raise SystemExit(f"TN_{f.name.upper()}={raw!r} must be a whole number") from None
    return dataclasses.replace(base, **changes, uploads=uploads)  # type: ignore[arg-type]
