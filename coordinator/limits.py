"""Rate limits: token buckets, alone (one per WebSocket session) or keyed (REST callers).

A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; each request or
message takes one. ``take`` never waits: it answers 0 (go ahead, a token was taken) or how
many seconds until a token will be there (nothing taken), and the caller decides whether
to refuse (REST: 429), to stop reading until then (worker sessions: TCP pushes back on the
client) or to close (live sessions). A rate of 0 or less turns a limit off.

``KeyedBuckets`` holds one bucket per key in a table of at most ``keys_max`` entries, so
made-up keys cannot grow memory: past it the least recently used key is forgotten. That
forgives nothing in practice: a key unused for ``burst / rate_per_s`` seconds has a full
bucket anyway, so only more than ``keys_max`` distinct callers within that time make the
table forget one that was still in debt.

The clock is injected (``time.monotonic`` by default) so tests drive it by hand.

``RestRateLimit`` is the ASGI middleware that applies a ``KeyedBuckets`` to REST requests:
per account (whether it calls with tokens or a browser's sign-in cookie: a new token buys
no fresh budget), per client address otherwise.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.accounts import Accounts
from coordinator.config import Config
from coordinator.http_auth import SESSION_COOKIE, bearer_token, error_response

Clock = Callable[[], float]


def _refill(tokens: float, since: float, now: float, rate_per_s: float, burst: int) -> float:
    return min(float(burst), tokens + max(0.0, now - since) * rate_per_s)


class TokenBucket:
    """One bucket; starts full."""

    __slots__ = ("_at", "_tokens", "burst", "clock", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self.clock = clock
        self._tokens = float(self.burst)
        self._at = clock()

    def take(self) -> float:
        """Take a token and return 0.0, or return the seconds until one is there."""
        if self.rate_per_s <= 0:
            return 0.0
        now = self.clock()
        self._tokens = _refill(self._tokens, self._at, now, self.rate_per_s, self.burst)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


class KeyedBuckets:
    """A bucket per key (each starts full), at most ``keys_max`` of them."""

    def __init__(self, rate_per_s: float, burst: int, keys_max: int,
                 clock: Clock = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self.keys_max = max(1, keys_max)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def take(self, key: str) -> float:
        """Take a token of ``key``'s bucket and return 0.0, or return the seconds until one
        is there."""
        if self.rate_per_s <= 0:
            return 0.0
        now = self.clock()
        hit = self._buckets.get(key)
        if hit is None:
            while len(self._buckets) >= self.keys_max:
                self._buckets.popitem(last=False)  # the least recently used
            tokens = float(self.burst)
        else:
            self._buckets.move_to_end(key)
            tokens = _refill(hit[0], hit[1], now, self.rate_per_s, self.burst)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s


def retry_after_s(wait_s: float) -> int:
    """Whole seconds for a ``Retry-After`` header: rounded up, at least 1."""
    return max(1, math.ceil(wait_s))


# ---- REST: the middleware ----------------------------------------------------------------


class RestLimits:
    """The REST buckets and who is charged. ``accounts`` is set by the app's lifespan
    (requests arrive only after it); ``exempt`` paths (the dashboard's static files) are
    never counted, so a page load does not spend the signed-in account's budget."""

    def __init__(self, config: Config, exempt: Iterable[str] = (),
                 clock: Clock = time.monotonic) -> None:
        self.config = config
        self.buckets = KeyedBuckets(config.rest_requests_per_s, config.rest_requests_burst,
                                    config.rest_keys_max, clock)
        self.exempt = frozenset(exempt)
        self.accounts: Accounts | None = None

    async def key(self, conn: HTTPConnection) -> tuple[str, str]:
        """(bucket key, who it is for the message): the account of a valid bearer token or
        sign-in cookie, or else the client's address. An account's tokens share its budget
        (any account may make many), and a made-up or revoked token is charged to the
        address, so inventing tokens buys no fresh budget either. Known tokens and sessions
        are answered from the accounts' memory, not the database."""
        accounts = self.accounts
        token = bearer_token(conn.headers)
        if accounts is not None and token is not None:
            if (account := await accounts.authenticate(token)) is not None:
                return "account:" + account.id, "account"
        elif accounts is not None and (sid := conn.cookies.get(SESSION_COOKIE)):
            web = await accounts.web_session(sid)
            if web is not None:
                return "account:" + web.account.id, "account"
        host = conn.client.host if conn.client is not None else "unknown"
        return "ip:" + host, "client address"

    def refusal_text(self, wait_s: float, who: str) -> str:
        c = self.config
        return (f"slow down; retry after {retry_after_s(wait_s)} s; the limit is "
                f"TN_REST_REQUESTS_PER_S={c.rest_requests_per_s} requests a second with bursts "
                f"of TN_REST_REQUESTS_BURST={c.rest_requests_burst}, per {who}")


class RestRateLimit:
    """ASGI middleware: HTTP requests over their bucket's rate get 429 with ``Retry-After``
    and the JSON error body, before any route runs. WebSockets have their own limits
    (coordinator/sessions.py, coordinator/live.py)."""

    def __init__(self, app: ASGIApp, limits: RestLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        if (scope["type"] != "http" or limits.config.rest_requests_per_s <= 0
                or scope["path"] in limits.exempt):
            await self.app(scope, receive, send)
            return
        key, who = await limits.key(HTTPConnection(scope))
        wait_s = limits.buckets.take(key)
        if wait_s <= 0:
            await self.app(scope, receive, send)
            return
        response = error_response(429, limits.refusal_text(wait_s, who))
        response.headers["Retry-After"] = str(retry_after_s(wait_s))
        await response(scope, receive, send)
