"""The browser dashboard: its static files, sign-in and sign-out, and the chunk-state array.

Static files (``dashboard/``: index.html, style.css, js/*.js ES modules) are read once at
startup and served with a strict Content-Security-Policy (no inline script or style, no
framing) by ``SecurityHeaders``, which also adds nosniff and a referrer policy to every
HTTP response of the coordinator.

Sign-in takes a username and password or an API token and starts a browser session: an
HttpOnly, SameSite=Strict cookie (Secure over TLS), checked by ``http_auth`` on REST and on
``/ws/live``. ``GET /auth/session`` gives the page its CSRF token, which state-changing
requests send back in ``X-CSRF-Token``. A session signed in with a token ends when that token
is revoked or expires (it lasts 12 hours at most, and never past the token's expiry); one that
races the token's revocation is refused (401, the token was revoked at ...). Sign-ins (made or
refused) and sign-outs are audited (coordinator/audit.py).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.accounts import Account, Accounts, Credential, WebSession
from coordinator.config import Config
from coordinator.core.core import Core
from coordinator.demo import DEMO
from coordinator.http_auth import (
    SESSION_COOKIE,
    ApiError,
    authenticate,
    cookie_account,
    json_response,
    same_origin,
)
from coordinator.http_wallet import read_body
from coordinator.live import Hub
from coordinator.parsing import DECODE_ERRORS

ROOT = Path(__file__).resolve().parent.parent / "dashboard"
DEMO_PASSWORD = "demo"  # with --demo only: the demo accounts' password
SIGNIN_BODY_BYTES_MAX = 4096
SIGNIN_FAILURES_MAX = 10  # failed sign-ins per name within the window, then 429
SIGNIN_WINDOW_MS = 5 * 60 * 1000
SIGNIN_NAMES_TRACKED_MAX = 10_000

CSP = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "connect-src 'self'", "font-src 'self'", "manifest-src 'self'", "base-uri 'none'",
    "form-action 'self'", "frame-ancestors 'none'",
))
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}

# (path, method, Dashboard method name); static files are in ``static_paths()``
DASHBOARD_ROUTES = [
    ("/auth/session", "GET", "session"),
    ("/auth/signin", "POST", "signin"),
    ("/auth/signout", "POST", "signout"),
    ("/api/tasks/{task_id}/chunk-states", "GET", "chunk_states"),
]


class SignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /auth/signin``: ``name`` and ``password``, or an API ``token``."""

    name: Annotated[str, Meta(max_length=200)] = ""
    password: Annotated[str, Meta(max_length=1024)] = ""
    token: Annotated[str, Meta(max_length=512)] = ""


class SessionAccount(msgspec.Struct, frozen=True):
    id: str
    name: str
    role: str


class SessionInfo(msgspec.Struct, frozen=True):
    """``GET /auth/session``: who is signed in (``account`` null: nobody) and the CSRF token
    to send as ``X-CSRF-Token`` with every state-changing request."""

    account: SessionAccount | None = None
    csrf: str = ""


class SecurityHeaders:
    """ASGI middleware: the security headers above on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def load_static(root: Path = ROOT) -> dict[str, Path]:
    """URL path -> file of every dashboard file (index.html is ``/``)."""
    files: dict[str, Path] = {}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in TYPES:
                url = "/" + path.relative_to(root).as_posix()
                files["/" if url == "/index.html" else url] = path
    return files


class Static:
    """Serves the files found by ``load_static`` at startup, from memory; a file edited
    since is read again (so a page reload shows a change to the dashboard at once)."""

    def __init__(self) -> None:
        self.files = load_static()
        self._cache: dict[str, tuple[int, bytes]] = {}

    def paths(self) -> list[str]:
        return list(self.files)

    async def serve(self, request: Request) -> Response:
        path = self.files.get(request.url.path)
        if path is None:
            raise ApiError(404, "no such dashboard file")
        try:
            mtime = path.stat().st_mtime_ns
            hit = self._cache.get(request.url.path)
            if hit is None or hit[0] != mtime:
                hit = self._cache[request.url.path] = (mtime, path.read_bytes())
        except OSError:
            raise ApiError(404, "no such dashboard file") from None
        return Response(hit[1], media_type=TYPES[path.suffix],
                        headers={"Cache-Control": "no-cache"})


class Dashboard:
    def __init__(self, config: Config, core: Core, accounts: Accounts, hub: Hub) -> None:
        self.config = config
        self.core = core
        self.accounts = accounts
        self.hub = hub
        self._failures: dict[str, deque[float]] = {}

    # ---- sign-in ----------------------------------------------------------------------

    async def session(self, request: Request) -> Response:
        sid = request.cookies.get(SESSION_COOKIE, "")
        web = await self.accounts.web_session(sid) if sid else None
        return json_response(_info(web))

    async def signin(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise ApiError(415, "send the sign-in as JSON")
        if not same_origin(request):
            raise ApiError(403, "sign in from this coordinator's own page")
        try:
            body = msgspec.json.decode(await read_body(request, SIGNIN_BODY_BYTES_MAX),
                                       type=SignIn)
        except DECODE_ERRORS as exc:
            raise ApiError(400, f"bad sign-in: {exc}") from None
        method = "token" if body.token else "password"
        try:
            account, token = await self._check(body)
            started = await self.accounts.start_web_session(account, token)
            if started is None:  # the token was revoked while signing in
                raise ApiError(401, await self._token_refusal(body.token), "token")
        except ApiError as exc:
            if exc.status in (401, 429):  # a wrong password or token, or locked out: audited
                claimed = None if body.token else await self.accounts.by_name(body.name)
                await self.accounts.audit.record(
                    "signin", claimed, request, ok=False,
                    detail={"method": method, "error": exc.error})
            raise
        sid, web = started
        await self.accounts.audit.record("signin", account, request, detail={"method": method})
        response = json_response(_info(web))
        lasts_s = max(0, web.expires_ms - int(time.time() * 1000)) // 1000
        response.set_cookie(SESSION_COOKIE, sid, max_age=lasts_s, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def _token_refusal(self, token: str) -> str:
        return await self.accounts.token_refusal(token.strip(), check="check the token pasted")

    async def _check(self, body: SignIn) -> tuple[Account, Credential | None]:
        """The account signing in, and the token it signs in with (None: a password)."""
        if body.token:
            token = await self.accounts.credential(body.token.strip())
            if token is None:  # unknown, revoked or expired: say which
                raise ApiError(401, await self._token_refusal(body.token), "token")
            return token.account, token
        if not body.name or not body.password:
            raise ApiError(400, "enter your username and password, or an API token", "name")
        now = time.monotonic()
        failures = self._failures.get(body.name)
        while failures and failures[0] < now - SIGNIN_WINDOW_MS / 1000:
            failures.popleft()
        if failures and len(failures) >= SIGNIN_FAILURES_MAX:
            wait = int(failures[0] + SIGNIN_WINDOW_MS / 1000 - now) + 1
            raise ApiError(429, f"too many failed sign-ins for this name; try again in {wait} s")
        account = await self.accounts.verify_password(body.name, body.password)
        if account is None:
            if len(self._failures) >= SIGNIN_NAMES_TRACKED_MAX:
                self._failures.clear()
            self._failures.setdefault(body.name, deque()).append(now)
            raise ApiError(401, "wrong username or password", "password")
        self._failures.pop(body.name, None)
        return account, None

    async def signout(self, request: Request) -> Response:
        account = await cookie_account(request, self.accounts)  # checks the CSRF token
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            await self.accounts.end_web_session(sid)
        if account is not None:
            await self.accounts.audit.record("signout", account, request)
        response = json_response(SessionInfo())
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response

    # ---- the chunk grid ---------------------------------------------------------------

    async def chunk_states(self, request: Request) -> Response:
        """One byte per chunk (0 pending, 1 leased, 2 done, 3 failed); ``X-TN-Chunk-Seq``
        is the last live ``chunks`` update it includes."""
        account = await authenticate(request, self.accounts, "customer")
        task = self.core.tasks.get(request.path_params["task_id"])
        if task is None or (account.role != "admin" and task.owner != account.id):
            raise ApiError(404, "no such task among yours")
        # no await from here on: the bytes and the seq are of the same instant
        return Response(bytes(task.chunk_state), media_type="application/octet-stream",
                        headers={"X-TN-Chunk-Seq": str(self.hub.chunk_seq(task.id)),
                                 "Cache-Control": "no-store"})


def _info(web: WebSession | None) -> SessionInfo:
    if web is None:
        return SessionInfo()
    a = web.account
    return SessionInfo(SessionAccount(a.id, a.name, a.role), web.csrf)


async def demo_passwords(accounts: Accounts) -> None:
    """``--demo``: the demo accounts sign in with the password "demo" (unless changed)."""
    for name, _ in DEMO:
        account = await accounts.by_name(name)
        if account is not None and not await accounts.has_password(account):
            await accounts.set_password(account, DEMO_PASSWORD)
