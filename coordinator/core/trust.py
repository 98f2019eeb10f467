"""Worker standing: adaptive trust (as BOINC does it) and fault attribution.

Per worker (its key, ``account/worker_id``; quorum distinctness is per account instead):

- a run of results that validation confirmed builds trust, so spot checks come less often;
  one invalid result resets it;
- a chunk the account failed that another worker then completed is blamed on it (a chunk
  failing everywhere is the chunk's fault, "poison", and blames nobody; a worker that dies
  or goes silent is not blamed either). Blame within ``blame_window_ms`` first limits the
  account to one lease at a time, then quarantines it for ``quarantine_ms`` with the reason
  shown to the worker.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TrustConfig:
    trusted_after: int = 10  # validated results in a row before spot checks thin out
    trusted_spot_divisor: int = 4  # trusted accounts are spot-checked this many times less
    blame_window_ms: int = 600_000
    rate_limit_blame: int = 3  # blamed chunks in the window -> one lease at a time
    quarantine_blame: int = 6  # blamed chunks in the window -> quarantine
    invalid_quarantine: int = 2  # invalid results in the window -> quarantine
    quarantine_ms: int = 600_000


@dataclass(slots=True)
class Standing:
    streak: int = 0  # validated results in a row
    valid: int = 0
    invalid: int = 0
    blame: deque[int] = field(default_factory=deque)  # when chunks were blamed on it
    invalid_at: deque[int] = field(default_factory=deque)
    quarantined_until: int = 0
    reason: str = ""


class Trust:
    def __init__(self, config: TrustConfig) -> None:
        self.config = config
        self.workers: dict[str, Standing] = {}
        self._quarantined: dict[str, int] = {}  # key -> until when, to notice it ending

    def of(self, key: str) -> Standing:
        standing = self.workers.get(key)
        if standing is None:
            standing = self.workers[key] = Standing()
        return standing

    def trusted(self, key: str) -> bool:
        s = self.workers.get(key)
        return s is not None and s.streak >= self.config.trusted_after

    def validated(self, key: str) -> Standing:
        s = self.of(key)
        s.streak += 1
        s.valid += 1
        return s

    def invalidated(self, key: str, now: int) -> Standing:
        s = self.of(key)
        s.streak = 0
        s.invalid += 1
        _push(s.invalid_at, now, self.config.blame_window_ms)
        if len(s.invalid_at) >= self.config.invalid_quarantine:
            self._quarantine(key, s, now, f"{len(s.invalid_at)} results disagreed with "
                                          "the accepted ones")
        return s

    def blamed(self, key: str, now: int) -> Standing:
        s = self.of(key)
        _push(s.blame, now, self.config.blame_window_ms)
        if len(s.blame) >= self.config.quarantine_blame:
            self._quarantine(key, s, now, f"{len(s.blame)} chunks failed here that other "
                                          "workers then completed")
        return s

    def _quarantine(self, key: str, s: Standing, now: int, why: str) -> None:
        s.quarantined_until = now + self.config.quarantine_ms
        self._quarantined[key] = s.quarantined_until
        s.reason = why
        s.blame.clear()
        s.invalid_at.clear()

    def released(self, now: int) -> bool:
        """Did a quarantine end by ``now``? Then its worker's free slots want filling."""
        ended = [k for k, until in self._quarantined.items() if until <= now]
        for key in ended:
            del self._quarantined[key]
        return bool(ended)

    def lease_limit(self, key: str, now: int) -> int | None:
        """None: no limit; 0: quarantined; 1: rate-limited to one lease at a time."""
        s = self.workers.get(key)
        if s is None:
            return None
        if s.quarantined_until > now:
            return 0
        _trim(s.blame, now, self.config.blame_window_ms)
        return 1 if len(s.blame) >= self.config.rate_limit_blame else None

    def why_limited(self, key: str, now: int) -> str | None:
        limit = self.lease_limit(key, now)
        if limit is None:
            return None
        s = self.workers[key]
        if limit == 0:
            secs = (s.quarantined_until - now + 999) // 1000
            return f"quarantined for {secs} more s: {s.reason}"
        return (f"limited to one chunk at a time: {len(s.blame)} chunks failed here recently "
                "that other workers completed")


def _trim(times: deque[int], now: int, window_ms: int) -> None:
    while times and times[0] <= now - window_ms:
        times.popleft()


def _push(times: deque[int], now: int, window_ms: int) -> None:
    _trim(times, now, window_ms)
    times.append(now)
