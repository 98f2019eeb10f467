"""Accounts and API tokens. Tokens are random, shown once, and stored as SHA-256 hashes
(a 256-bit random token needs no slow hash); every REST call and worker hello checks one."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

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


class Accounts:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._by_hash: dict[str, tuple[Account, int | None]] = {}

    async def create(self, name: str, role: Role) -> Account:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        account = Account("a_" + secrets.token_hex(8), name, role)
        await self.store.transaction([(
            "INSERT INTO accounts (id, name, role, created_ms) VALUES (?,?,?,?)",
            (account.id, name, role, int(time.time() * 1000)),
        )])
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
