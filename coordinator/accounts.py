"""Accounts and API tokens. Tokens are random, shown once, and stored as SHA-256 hashes
(a 256-bit random token needs no slow hash); every REST call and worker hello checks one.

A token's public id is ``tk_`` and the first 12 hex digits of its hash (no column of its
own, so tokens made before ids existed have one too). It names the token in listings and
revocations and the audit log without revealing anything that would let it be used; a new
token whose id would clash with an existing one is drawn again, so ids are unique.
Revoking drops the token from the cache at once, ends the browser sessions signed in with
it, and calls ``on_revoked`` (the socket layers close what the token opened).

Nothing lasts longer than the token it rests on: ``credential`` gives a token's expiry with
its account, a browser session signed in with a token ends when the token expires, and the
socket layers close what a token opened when it expires. Revocations are also remembered in
memory (the latest ``REVOKED_REMEMBERED_MAX``): a check that read the database while a
revocation was being made may have read the row as it was before, so what was read is refused
if memory says revoked, and a socket registered after such a check looks again
(``revoked_at``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

import anyio

from coordinator.audit import AuditLog
from coordinator.passwords import DUMMY_HASH, PASSWORD_CHARS_MAX, check_password, hash_password
from coordinator.store.sqlite import SqliteStore

Role = Literal["customer", "worker", "admin"]
ROLES: tuple[Role, ...] = ("customer", "worker", "admin")


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    role: Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "tn_" + secrets.token_urlsafe(32)


TOKEN_ID_HEX = 12  # hex digits of the hash in a token's public id
TOKEN_ID = re.compile(r"tk_[0-9a-f]{12}")
TOKENS_CACHED_MAX = 10_000  # valid tokens remembered in memory (the rest: one query)
TOKENS_LISTED_MAX = 500  # a listing shows live tokens first, then the newest others
TOKEN_CHECK_REST = "check --token or TN_TOKEN (the header is 'Authorization: Bearer <token>')"
REVOKED_REMEMBERED_MAX = 10_000  # latest revocations kept in memory (see the notes above)


def token_id(digest: str) -> str:
    """The public id of the token whose hash is ``digest``."""
    return "tk_" + digest[:TOKEN_ID_HEX]


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A token as stored: never the token itself."""

    hash: str
    account_id: str
    account_name: str
    label: str
    created_ms: int
    expires_ms: int | None
    revoked_ms: int | None

    @property
    def id(self) -> str:
        return token_id(self.hash)

    def state(self, now_ms: int) -> Literal["active", "expired", "revoked"]:
        if self.revoked_ms is not None:
            return "revoked"
        return "expired" if self.expires_ms is not None and self.expires_ms <= now_ms else "active"


@dataclass(frozen=True, slots=True)
class Credential:
    """A token that authenticates: its account, its hash, and when it expires (None: never)."""

    account: Account
    token_hash: str
    expires_ms: int | None


def utc_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def expired_reason(at_ms: int) -> str:
    """Why a session opened with a token is closed when the token expires."""
    return f"token expired at {utc_text(at_ms)}; get a new token (tn token create)"


def revoked_reason(at_ms: int) -> str:
    """Why a session opened with a token is closed when the token turns out revoked."""
    return f"token revoked at {utc_text(at_ms)}; get a new token (tn token create)"


# ---- passwords and browser sessions (the dashboard's sign-in) ----------------------------
#
# Passwords: see coordinator/passwords.py. Browser sessions are random 256-bit ids kept, like
# tokens, only as SHA-256 hashes; each has its own CSRF token.

SCRYPT_CONCURRENT_MAX = 2  # hashes at once (2 x 32 MiB), whatever the sign-in rate
WEB_SESSION_MS = 12 * 3600 * 1000  # a browser sign-in lasts this long (or to its token's end)
WEB_SESSIONS_CACHED_MAX = 10_000  # sessions remembered in memory (the rest: one query)

AUTH_TABLES = (
    "CREATE TABLE IF NOT EXISTS passwords (account_id TEXT PRIMARY KEY"
    " REFERENCES accounts(id), hash TEXT NOT NULL, updated_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS web_sessions (hash TEXT PRIMARY KEY, account_id TEXT NOT NULL"
    " REFERENCES accounts(id), csrf TEXT NOT NULL, created_ms INTEGER NOT NULL,"
    " expires_ms INTEGER NOT NULL, token_hash TEXT)",
)
# a browser session, unless signed in with a token revoked by then (checked in the same
# write transaction, so a revocation just committed is not undone by a late insert)
_INSERT_WEB_SESSION = (
    "INSERT INTO web_sessions (hash, account_id, csrf, created_ms, expires_ms, token_hash)"
    " SELECT ?,?,?,?,?,? WHERE NOT EXISTS"
    " (SELECT 1 FROM tokens WHERE hash = ? AND revoked_ms IS NOT NULL)")


@dataclass(frozen=True, slots=True)
class WebSession:
    account: Account
    csrf: str
    expires_ms: int  # the sooner of the sign-in's end and its token's expiry
    token_hash: str | None = None  # signed in with this API token: its revocation ends it
    token_expires_ms: int | None = None  # that token's expiry (None: never, or no token)


class AccountsAuth:
    """Mixin of ``Accounts``: passwords and browser sessions (see the notes above)."""

    store: SqliteStore
    audit: AuditLog
    _web: dict[str, WebSession]
    _recent_revoked: OrderedDict[str, int]  # token hash -> revoked_ms (see Accounts)
    _scrypt: anyio.CapacityLimiter | None = None
    # bumped by every revocation and sign-out: a lookup that read the database before one
    # does not cache what it read (it may be what was just revoked)
    _ended: int = 0

    def _scrypt_limiter(self) -> anyio.CapacityLimiter:
        """Made on first use (it needs a running event loop)."""
        if self._scrypt is None:
            self._scrypt = anyio.CapacityLimiter(SCRYPT_CONCURRENT_MAX)
        return self._scrypt

    async def ensure_auth_tables(self) -> None:
        """The sign-in tables (and the audit log's), made or brought up to date."""
        await self.store.transaction([(sql, ()) for sql in AUTH_TABLES])
        columns = {str(r[1]) for r in await self.store.reader.execute_fetchall(
            "PRAGMA table_info(web_sessions)")}
        if "token_hash" not in columns:  # a database made before token revocation
            await self.store.transaction(
                [("ALTER TABLE web_sessions ADD COLUMN token_hash TEXT", ())])
        await self.audit.ensure_tables()

    async def set_password(self, account: Account, password: str) -> None:
        if not password or len(password) > PASSWORD_CHARS_MAX:
            raise ValueError(f"a password has 1 to {PASSWORD_CHARS_MAX} characters")
        hashed = await anyio.to_thread.run_sync(hash_password, password,
                                                limiter=self._scrypt_limiter())
        await self.store.transaction([(
            "INSERT INTO passwords (account_id, hash, updated_ms) VALUES (?,?,?)"
            " ON CONFLICT(account_id) DO UPDATE SET hash = excluded.hash,"
            " updated_ms = excluded.updated_ms",
            (account.id, hashed, int(time.time() * 1000)),
        )])

    async def has_password(self, account: Account) -> bool:
        row = await self.store.one("SELECT 1 FROM passwords WHERE account_id = ?",
                                   (account.id,))
        return row is not None

    async def verify_password(self, name: str, password: str) -> Account | None:
        """The named account if ``password`` is its password; None otherwise (also for an
        unknown name, after the same amount of work, so timing does not tell names)."""
        if not password or len(password) > PASSWORD_CHARS_MAX or len(name) > 200:
            return None
        row = await self.store.one(
            "SELECT a.id, a.name, a.role, p.hash FROM accounts a"
            " JOIN passwords p ON p.account_id = a.id WHERE a.name = ?", (name,))
        stored = row[3] if row else DUMMY_HASH
        ok = await anyio.to_thread.run_sync(check_password, password, stored,
                                            limiter=self._scrypt_limiter())
        return Account(row[0], row[1], row[2]) if ok and row else None

    async def start_web_session(self, account: Account, token: Credential | None = None
                                ) -> tuple[str, WebSession] | None:
        """A new browser session, ending by ``token``'s expiry if signed in with a token;
        None if that token was revoked before the session could be stored."""
        sid = secrets.token_urlsafe(32)
        now = int(time.time() * 1000)
        expires_ms = now + WEB_SESSION_MS
        token_hash = token_expires_ms = None
        if token is not None:
            token_hash, token_expires_ms = token.token_hash, token.expires_ms
            expires_ms = min(expires_ms, token_expires_ms or expires_ms)
        web = WebSession(account, secrets.token_urlsafe(32), expires_ms, token_hash,
                         token_expires_ms)
        await self.store.transaction([
            ("DELETE FROM web_sessions WHERE expires_ms <= ?", (now,)),
            (_INSERT_WEB_SESSION, (hash_token(sid), account.id, web.csrf, now, expires_ms,
                                   token_hash, token_hash)),
        ])
        # a revocation committed before the insert (which then did nothing) was remembered
        # before the write lock passed to it; one committed after deletes the session
        if token_hash is not None and token_hash in self._recent_revoked:
            return None
        return sid, web

    async def web_session(self, sid: str) -> WebSession | None:
        if not sid or len(sid) > 128:
            return None
        digest = hash_token(sid)
        web = self._web.get(digest)
        if web is None:
            ended = self._ended
            row = await self.store.one(
                "SELECT a.id, a.name, a.role, s.csrf, s.expires_ms, s.token_hash, t.expires_ms"
                " FROM web_sessions s JOIN accounts a ON a.id = s.account_id"
                " LEFT JOIN tokens t ON t.hash = s.token_hash WHERE s.hash = ?", (digest,))
            if row is None or row[5] in self._recent_revoked:  # see the module's notes
                return None
            ends = row[4] if row[6] is None else min(row[4], row[6])
            web = WebSession(Account(row[0], row[1], row[2]), row[3], ends, row[5], row[6])
            if len(self._web) >= WEB_SESSIONS_CACHED_MAX:
                self._web.clear()
            if ended == self._ended:
                self._web[digest] = web
        return web if web.expires_ms > time.time() * 1000 else None

    async def end_web_session(self, sid: str) -> None:
        digest = hash_token(sid)
        await self.store.transaction([("DELETE FROM web_sessions WHERE hash = ?", (digest,))])
        self._ended += 1
        self._web.pop(digest, None)


class Accounts(AccountsAuth):
    """Accounts, their tokens and sign-ins; ``audit`` is the security log every adapter
    writes to (it lives here because every adapter already holds the accounts)."""

    def __init__(self, store: SqliteStore, audit: AuditLog | None = None) -> None:
        self.store = store
        self.audit = AuditLog(store) if audit is None else audit
        self._web = {}  # browser sessions by hash (see AccountsAuth)
        self._by_hash: dict[str, Credential] = {}
        self._recent_revoked = OrderedDict()  # the latest revocations: hash -> revoked_ms
        self._issuing = anyio.Lock()  # token creation: the per-account limit holds exactly
        # called after an account is created (the app grants sandbox starting credit)
        self.on_created: Callable[[Account], Awaitable[None]] | None = None
        # called with a token's hash after it is revoked (the sockets it opened are closed)
        self.on_revoked: Callable[[str], Awaitable[None]] | None = None

    async def create(self, name: str, role: Role) -> Account:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        account = Account("a_" + secrets.token_hex(8), name, role)
        await self.store.transaction([(
            "INSERT INTO accounts (id, name, role, created_ms) VALUES (?,?,?,?)",
            (account.id, name, role, int(time.time() * 1000)),
        )])
        if self.on_created is not None:
            await self.on_created(account)
        return account

    async def by_name(self, name: str) -> Account | None:
        row = await self.store.one("SELECT id, name, role FROM accounts WHERE name = ?", (name,))
        return Account(row[0], row[1], row[2]) if row else None

    async def by_id(self, account_id: str) -> Account | None:
        row = await self.store.one("SELECT id, name, role FROM accounts WHERE id = ?",
                                   (account_id,))
        return Account(row[0], row[1], row[2]) if row else None

    async def issue_token(self, account: Account, label: str = "",
                          lifetime_ms: int | None = None, live_max: int | None = None,
                          expires_by_ms: int | None = None) -> str:
        """A new token for ``account`` (shown to the caller once, never stored), expiring
        after ``lifetime_ms`` (None: never) but no later than ``expires_by_ms`` (None: no
        bound). With ``live_max``, refused (``TooManyTokens``) while the account has that
        many live."""
        async with self._issuing:
            now = int(time.time() * 1000)
            expires_ms = None if lifetime_ms is None else now + lifetime_ms
            if expires_by_ms is not None:
                expires_ms = min(expires_ms or expires_by_ms, expires_by_ms)
            if live_max is not None:
                row = await self.store.one(
                    "SELECT COUNT(*) FROM tokens WHERE account_id = ? AND revoked_ms IS NULL"
                    " AND (expires_ms IS NULL OR expires_ms > ?)", (account.id, now))
                if int(row[0]) >= live_max:
                    raise TooManyTokens(int(row[0]))
            token = new_token()
            while await self._token_rows("t.hash >= ? AND t.hash < ?",
                                         _id_range(token_id(hash_token(token))), 1):
                token = new_token()  # its id would clash with another token's: draw again
            await self.store.transaction([(
                "INSERT INTO tokens (hash, account_id, label, created_ms, expires_ms)"
                " VALUES (?,?,?,?,?)", (hash_token(token), account.id, label, now, expires_ms),
            )])
        return token

    async def tokens_of(self, account_id: str, now_ms: int) -> list[TokenRow]:
        """The account's tokens: live ones first, then the newest others (bounded)."""
        return await self._token_rows(
            "t.account_id = ? ORDER BY (t.revoked_ms IS NULL AND (t.expires_ms IS NULL OR"
            " t.expires_ms > ?)) DESC, t.created_ms DESC, t.hash", (account_id, now_ms),
            TOKENS_LISTED_MAX)

    async def find_token(self, public_id: str, account_id: str | None) -> TokenRow | None:
        """The token with this public id, if it is ``account_id``'s (None: anyone's)."""
        if not TOKEN_ID.fullmatch(public_id):
            return None
        where = "t.hash >= ? AND t.hash < ?"
        args: tuple[str, ...] = _id_range(public_id)
        if account_id is not None:
            where, args = where + " AND t.account_id = ?", (*args, account_id)
        rows = await self._token_rows(where, args, 1)
        return rows[0] if rows else None

    async def revoke_token(self, row: TokenRow) -> TokenRow:
        """Revoke at once: the database, the cache, the browser sessions signed in with it,
        then ``on_revoked``. Revoking a revoked token changes nothing. The row returned is
        made here: the reader may not see the commit yet."""
        if row.revoked_ms is None and (at := self.revoked_at(row.hash)) is not None:
            row = replace(row, revoked_ms=at)  # read before a revocation just made
        if row.revoked_ms is not None:
            return row
        now = int(time.time() * 1000)
        await self.store.transaction([
            ("UPDATE tokens SET revoked_ms = ? WHERE hash = ? AND revoked_ms IS NULL",
             (now, row.hash)),
            ("DELETE FROM web_sessions WHERE token_hash = ?", (row.hash,)),
        ])
        # no await from the commit to on_revoked: a check made after it sees the revocation
        # in memory, and a session registered before it is closed by on_revoked
        revoked_ms = self._recent_revoked.setdefault(row.hash, now)  # two at once: the first
        while len(self._recent_revoked) > REVOKED_REMEMBERED_MAX:
            self._recent_revoked.popitem(last=False)
        self._ended += 1
        self._by_hash.pop(row.hash, None)
        for sid, web in list(self._web.items()):
            if web.token_hash == row.hash:
                del self._web[sid]
        if self.on_revoked is not None:
            await self.on_revoked(row.hash)
        return replace(row, revoked_ms=revoked_ms)

    def revoked_at(self, token_hash: str | None) -> int | None:
        """When this token was revoked, if it was among the latest revocations (enough for a
        check that raced one: it was made while the check ran)."""
        return None if token_hash is None else self._recent_revoked.get(token_hash)

    async def token_refusal(self, token: str, now_ms: int | None = None, *,
                            check: str = TOKEN_CHECK_REST) -> str:
        """Why ``token`` does not authenticate, in words that say what to do next (``check``:
        where an unknown token came from, to check it)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        digest = hash_token(token) if token and len(token) <= 512 else None
        if digest is None:
            row = None
        elif (revoked := self.revoked_at(digest)) is not None:
            row = (None, revoked)  # the reader may not see it yet
        else:
            row = await self.store.one(
                "SELECT expires_ms, revoked_ms FROM tokens WHERE hash = ?", (digest,))
        if row is None:
            return f"unknown token: {check}, or ask an admin for a token"
        if row[1] is not None:
            return (f"this token was revoked at {utc_text(row[1])}; use another one, or create "
                    "one with `tn token create` (or ask an admin)")
        if row[0] is not None and row[0] <= now_ms:
            return (f"this token expired at {utc_text(row[0])}; create a new one with `tn token "
                    "create --expires 30d` using a token that still works (or ask an admin)")
        return "this token cannot be used; ask an admin for a new one"

    async def _token_rows(self, where: str, args: tuple[object, ...], limit: int
                          ) -> list[TokenRow]:
        rows = await self.store.reader.execute_fetchall(
            "SELECT t.hash, t.account_id, a.name, t.label, t.created_ms, t.expires_ms,"
            f" t.revoked_ms FROM tokens t JOIN accounts a ON a.id = t.account_id WHERE {where}"
            " LIMIT ?", (*args, limit))
        return [TokenRow(*r) for r in rows]

    async def authenticate(self, token: str, now_ms: int | None = None) -> Account | None:
        """The token's account, or None if it is unknown, revoked or expired."""
        credential = await self.credential(token, now_ms)
        return None if credential is None else credential.account

    async def credential(self, token: str, now_ms: int | None = None) -> Credential | None:
        """The token's account, hash and expiry, or None if it is unknown, revoked or
        expired; from memory once seen (revoking forgets it at once)."""
        if not token or len(token) > 512:
            return None
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        digest = hash_token(token)
        hit = self._by_hash.get(digest)
        if hit is None:
            ended = self._ended
            row = await self.store.one(
                "SELECT a.id, a.name, a.role, t.expires_ms FROM tokens t"
                " JOIN accounts a ON a.id = t.account_id"
                " WHERE t.hash = ? AND t.revoked_ms IS NULL",
                (digest,),
            )
            if row is None or digest in self._recent_revoked:  # see the module's notes
                return None
            hit = Credential(Account(row[0], row[1], row[2]), digest, row[3])
            if len(self._by_hash) >= TOKENS_CACHED_MAX:
                self._by_hash.clear()
            if ended == self._ended:
                self._by_hash[digest] = hit
        if hit.expires_ms is not None and hit.expires_ms <= now_ms:
            return None
        return hit


class TooManyTokens(Exception):
    """The account already has the most live tokens allowed."""

    def __init__(self, live: int) -> None:
        super().__init__(f"{live} live tokens")
        self.live = live


def _id_range(public_id: str) -> tuple[str, str]:
    """Hashes starting with the id's hex digits: ``[prefix, prefix + "g")`` on the primary
    key's index ("g" sorts after every hex digit)."""
    prefix = public_id.removeprefix("tk_")
    return prefix, prefix + "g"
