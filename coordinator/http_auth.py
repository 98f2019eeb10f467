"""Authentication and error replies shared by the REST routes and sockets."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from coordinator.accounts import Account, Accounts, Role, expired_reason, utc_text
from coordinator.parsing import whole_number
from schema.rest import ErrorBody

JSON = "application/json"


class ApiError(Exception):
    """A refusal with a status and a message that says what to do next; ``actor``: the
    account refused, when known (a 403 is audited with it)."""

    def __init__(self, status: int, error: str, field: str | None = None, *,
                 actor: Account | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field
        self.actor = actor


def error_response(status: int, error: str, field: str | None = None) -> Response:
    return Response(msgspec.json.encode(ErrorBody(error, field)), status, media_type=JSON)


def json_response(body: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type=JSON)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """The whole-number query parameter ``name`` within [lo, hi] (``default`` when absent);
    anything else is a 400 that says what to send."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = whole_number(raw)
    hi = max(lo, hi)
    if value is None or not lo <= value <= hi:
        raise ApiError(400, f"{name} must be a whole number from {lo} to {hi}", name)
    return value


async def authenticate(request: Request, accounts: Accounts, *roles: Role) -> Account:
    token = bearer_token(request.headers)
    if token is None:
        account = await cookie_account(request, accounts)
        if account is None:
            raise ApiError(401, "sign in: send the header 'Authorization: Bearer <token>'")
    else:
        account = await accounts.authenticate(token)
        if account is None:  # unknown, revoked or expired: say which
            raise ApiError(401, await accounts.token_refusal(token))
    if roles and account.role not in roles and account.role != "admin":
        raise ApiError(403, f"a {account.role} token cannot do this; it needs a "
                            f"{' or '.join(roles)} account's token", actor=account)
    return account


# ---- browser sessions (the dashboard): a cookie instead of a bearer token ------------------
#
# The cookie is HttpOnly and SameSite=Strict (see coordinator/dashboard.py). A request that
# changes state with it must also carry the session's CSRF token in ``X-CSRF-Token`` (a
# page of another site can make the browser send the cookie, never read the token); a
# request with a bearer token needs none, since no browser adds that header by itself.

SESSION_COOKIE = "tn_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(conn: HTTPConnection) -> bool:
    """No Origin header (not a browser, or a same-origin GET), or one naming this host."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    host = conn.headers.get("host", "")
    return origin.partition("://")[2].rstrip("/") == host


async def cookie_account(request: Request, accounts: Accounts) -> Account | None:
    """The account of the request's session cookie, or None if it has none; a stale cookie
    or a state-changing request without the session's CSRF token is refused."""
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        return None
    web = await accounts.web_session(sid)
    if web is None:
        raise ApiError(401, "your sign-in has expired or ended; sign in again")
    if request.method not in SAFE_METHODS:
        given = request.headers.get(CSRF_HEADER, "")
        if not same_origin(request) or not hmac.compare_digest(given.encode(),
                                                               web.csrf.encode()):
            raise ApiError(403, "a signed-in browser must send its X-CSRF-Token header "
                                "(from GET /auth/session) with every change")
    return web.account


@dataclass(frozen=True, slots=True)
class SocketCaller:
    """Who opened a WebSocket, and with what: the hash of the API token behind it (its bearer
    token, or the one its browser signed in with; None: a password sign-in), and when that
    credential stops working (None: never)."""

    account: Account
    token_hash: str | None
    expires_ms: int | None
    by_cookie: bool

    def expired_reason(self) -> str:
        """Why the socket is closed at ``expires_ms``, and what to do next."""
        assert self.expires_ms is not None, "only a credential that expires ends"
        if self.by_cookie:
            return f"your sign-in ended at {utc_text(self.expires_ms)}; sign in again"
        return expired_reason(self.expires_ms)


async def socket_account(conn: HTTPConnection, accounts: Accounts) -> SocketCaller | None:
    """A WebSocket's caller: its bearer token, or its session cookie when the handshake comes
    from this site's own pages (a page of another site may not use the cookie)."""
    token = bearer_token(conn.headers)
    if token is not None:
        cred = await accounts.credential(token)
        return None if cred is None else SocketCaller(cred.account, cred.token_hash,
                                                      cred.expires_ms, by_cookie=False)
    sid = conn.cookies.get(SESSION_COOKIE)
    if not sid or not same_origin(conn):
        return None
    web = await accounts.web_session(sid)
    return None if web is None else SocketCaller(web.account, web.token_hash, web.expires_ms,
                                                 by_cookie=True)


async def credential_expiry(request: Request, accounts: Accounts) -> int | None:
    """When the API token behind an authenticated request expires: its bearer token, or the
    token its browser signed in with (None: never, or a password sign-in). Refused (401) if
    it stopped working since the request was authenticated."""
    token = bearer_token(request.headers)
    if token is not None:
        cred = await accounts.credential(token)
        if cred is None:
            raise ApiError(401, await accounts.token_refusal(token))
        return cred.expires_ms
    web = await accounts.web_session(request.cookies.get(SESSION_COOKIE, ""))
    if web is None:
        raise ApiError(401, "your sign-in has expired or ended; sign in again")
    return web.token_expires_ms
