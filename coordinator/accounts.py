"""Accounts and API tokens. Tokens are random, shown once, and stored as SHA-256 hashes
(a 256-bit random token needs no slow hash); every REST call and worker hello checks one."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import anyio

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


# ---- passwords and browser sessions (the dashboard's sign-in) ----------------------------
#
# Passwords are hashed with scrypt (memory-hard: n=2**15, r=8 takes 32 MiB and ~50-100 ms
# per try), a random 16-byte salt per account, stored as ``scrypt$n$r$p$salt$hash`` so the
# parameters can grow without invalidating old hashes. Browser sessions are random 256-bit
# ids kept, like tokens, only as SHA-256 hashes; each has its own CSRF token.

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SCRYPT_MAXMEM_BYTES = 64 << 20
PASSWORD_CHARS_MAX = 1024
SCRYPT_CONCURRENT_MAX = 2  # hashes at once (2 x 32 MiB), whatever the sign-in rate
WEB_SESSION_MS = 12 * 3600 * 1000  # a browser sign-in lasts this long
WEB_SESSIONS_CACHED_MAX = 10_000  # sessions remembered in memory (the rest: one query)
_DUMMY_HASH = "scrypt$32768$8$1$" + "00" * 16 + "$" + "00" * 32  # unknown names cost the same

AUTH_TABLES = (
    "CREATE TABLE IF NOT EXISTS passwords (account_id TEXT PRIMARY KEY"
    " REFERENCES accounts(id), hash TEXT NOT NULL, updated_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS web_sessions (hash TEXT PRIMARY KEY, account_id TEXT NOT NULL"
    " REFERENCES accounts(id), csrf TEXT NOT NULL, created_ms INTEGER NOT NULL,"
    " expires_ms INTEGER NOT NULL)",
)


def hash_password(password: str, salt: bytes | None = None, n: int = SCRYPT_N,
                  r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Slow on purpose (run it in a thread); the result embeds its salt and parameters."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                            maxmem=SCRYPT_MAXMEM_BYTES, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Does ``password`` match a ``hash_password`` result? Constant-time compare."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        again = hash_password(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return secrets.compare_digest(again.rsplit("$", 1)[1], digest)


@dataclass(frozen=True, slots=True)
class WebSession:
    account: Account
    csrf: str
    expires_ms: int


class AccountsAuth:
    """Mixin of ``Accounts``: passwords and browser sessions (see the notes above)."""

    store: SqliteStore
    _web: dict[str, WebSession]
    _scrypt: anyio.CapacityLimiter | None = None

    def _scrypt_limiter(self) -> anyio.CapacityLimiter:
        """Made on first use (it needs a running event loop)."""
        if self._scrypt is None:
            self._scrypt = anyio.CapacityLimiter(SCRYPT_CONCURRENT_MAX)
        return self._scrypt

    async def ensure_auth_tables(self) -> None:
        await self.store.transaction([(sql, ()) for sql in AUTH_TABLES])

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
        stored = row[3] if row else _DUMMY_HASH
        ok = await anyio.to_thread.run_sync(check_password, password, stored,
                                            limiter=self._scrypt_limiter())
        return Account(row[0], row[1], row[2]) if ok and row else None

    async def start_web_session(self, account: Account) -> tuple[str, WebSession]:
        sid = secrets.token_urlsafe(32)
        now = int(time.time() * 1000)
        web = WebSession(account, secrets.token_urlsafe(32), now + WEB_SESSION_MS)
        await self.store.transaction([
            ("DELETE FROM web_sessions WHERE expires_ms <= ?", (now,)),
            ("INSERT INTO web_sessions (hash, account_id, csrf, created_ms, expires_ms)"
             " VALUES (?,?,?,?,?)", (hash_token(sid), account.id, web.csrf, now,
                                     web.expires_ms)),
        ])
        return sid, web

    async def web_session(self, sid: str) -> WebSession | None:
        if not sid or len(sid) > 128:
            return None
        digest = hash_token(sid)
        web = self._web.get(digest)
        if web is None:
            row = await self.store.one(
                "SELECT a.id, a.name, a.role, s.csrf, s.expires_ms FROM web_sessions s"
                " JOIN accounts a ON a.id = s.account_id WHERE s.hash = ?", (digest,))
            if row is None:
                return None
            web = WebSession(Account(row[0], row[1], row[2]), row[3], row[4])
            if len(self._web) >= WEB_SESSIONS_CACHED_MAX:
                self._web.clear()
            self._web[digest] = web
        return web if web.expires_ms > time.time() * 1000 else None

    async def end_web_session(self, sid: str) -> None:
        digest = hash_token(sid)
        self._web.pop(digest, None)
        await self.store.transaction([("DELETE FROM web_sessions WHERE hash = ?", (digest,))])


class Accounts(AccountsAuth):
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._web = {}  # browser sessions by hash (see AccountsAuth)
        self._by_hash: dict[str, tuple[Account, int | None]] = {}
        # called after an account is created (the app grants sandbox starting credit)
        self.on_created: Callable[[Account], Awaitable[None]] | None = None

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

    async def issue_token(self, account: Account, label: str = "") -> str:
        token = new_token()
        await self.store.transaction([(
            "INSERT INTO tokens (hash, account_id, label, created_ms) VALUES (?,?,?,?)",
            (hash_token(token), account.id, label, int(time.time() * 1000)),
        )])
        return token

    async def authenticate(self, token: str, now_ms: int | None = None) -> Account | None:
        """The token's account, or None if it is unknown, revoked or expired."""
        if not token or len(token) > 512:
            return None
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        digest = hash_token(token)
        hit = self._by_hash.get(digest)
        if hit is None:
            row = await self.store.one(
                "SELECT a.id, a.name, a.role, t.expires_ms FROM tokens t"
                " JOIN accounts a ON a.id = t.account_id"
                " WHERE t.hash = ? AND t.revoked_ms IS NULL",
                (digest,),
            )
            if row is None:
                return None
            hit = (Account(row[0], row[1], row[2]), row[3])
            self._by_hash[digest] = hit
        account, expires = hit
        if expires is not None and expires <= now_ms:
            return None
        return account

