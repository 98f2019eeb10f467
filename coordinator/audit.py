"""The audit log: who did what security-relevant or money-moving thing, when, from where.

One row per action (table ``audit``): the time, the actor (an account, or ``console`` for
``tn-coordinator user`` and ``stripe`` for a verified webhook), the action (``signin``,
``token.create``, ``wallet.deposit``, ``access.forbidden``, ...), its target (a token id,
task id, ``withdrawal:7``, ``account:alice``), a small JSON detail, the peer's address and
the outcome (``ok`` or ``refused``). Admins read it newest first (``GET /api/admin/audit``,
``tn audit``).

Crash semantics: a row is written after the action it records has committed (money moves
after the core's reply, which comes after its group commit; tokens, sign-ins and accounts
after their own transaction), in a transaction of its own. So a row never describes
something that did not happen, and a coordinator killed between the two commits loses that
one row: at most once. A row that cannot be written is logged and does not fail the request
either, since the action has happened; the tables of record (transfers, tokens) still hold it.

Bounds: refusals are what a flood is made of, so at most ``audit_refusals_per_minute_max``
refused rows a minute are written per action, source address and account (the one refused,
or the name tried when it exists); the rest are counted and the count goes into the next row
written for that source as ``detail.suppressed`` (a source that stops leaves its last count
unwritten, but logged as a warning when the throttling began). Every
``TRIM_EVERY`` rows, rows beyond ``audit_rows_max`` (by id: the primary key, no scan) and
older than ``audit_age_days_max`` (by the ``at_ms`` index) are deleted in the same transaction.

Never secrets: a detail key naming one (``token``, ``password``, ...) is our own bug and fails
an assertion; callers name tokens by their public id only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import HTTPConnection

from coordinator.config import Config
from coordinator.store.sqlite import SqliteStore
from schema.rest import AuditEntry

if TYPE_CHECKING:
    from coordinator.accounts import Account

log = logging.getLogger("tn.audit")

AUDIT_TABLES = (
    "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL,"
    " actor_id TEXT, actor_name TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,"
    " detail TEXT NOT NULL, ip TEXT NOT NULL,"
    " outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'refused')))",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit(at_ms)",
    "CREATE INDEX IF NOT EXISTS audit_action ON audit(action, id)",
    "CREATE INDEX IF NOT EXISTS audit_actor ON audit(actor_name, id)",
)
_INSERT = (
    "INSERT INTO audit (at_ms, actor_id, actor_name, action, target, detail, ip, outcome)"
    " VALUES (?,?,?,?,?,?,?,?)"
)
SECRET_KEYS = frozenset({"token", "password", "secret", "cookie", "csrf", "authorization",
                         "session", "hash"})
TRIM_EVERY = 100  # rows written between trims
REFUSAL_WINDOW_MS = 60_000
REFUSAL_KEYS_MAX = 10_000  # (action, source) pairs tracked; past it the counts start over
TEXT_CHARS_MAX = 200  # target, actor name and detail strings are cut to this


class AuditLog:
    def __init__(self, store: SqliteStore, config: Config | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        config = Config() if config is None else config
        self.store = store
        self.clock = clock  # the refusal throttle's (seconds); tests drive it by hand
        self.rows_max = config.audit_rows_max
        self.age_ms_max = config.audit_age_days_max * 86_400_000
        self.refusals_max = config.audit_refusals_per_minute_max
        self._since_trim = 0
        # (action, source) -> [window start (clock ms), rows written, rows suppressed]
        self._refusals: dict[tuple[str, str], list[int]] = {}

    async def ensure_tables(self) -> None:
        await self.store.transaction([(sql, ()) for sql in AUDIT_TABLES])
        await self.store.transaction(self._trim(int(time.time() * 1000)))

    async def record(self, action: str, actor: Account | None,
                     conn: HTTPConnection | None = None, *, target: str = "",
                     detail: Mapping[str, Any] | None = None, ok: bool = True,
                     actor_name: str | None = None) -> None:
        """Append one row (after the action committed; see the module's notes). ``conn``
        gives the peer's address; ``actor_name`` names an actor without an account."""
        detail = dict(detail or {})
        assert not SECRET_KEYS & {k.lower() for k in detail}, f"a secret in {action}'s detail"
        ip = conn.client.host if conn is not None and conn.client is not None else ""
        if not ok:
            suppressed = self._throttle(action, f"{ip} {actor.id if actor else ''}".strip())
            if suppressed is None:
                return
            if suppressed:
                detail["suppressed"] = suppressed
        name = actor.name if actor is not None else (actor_name or "")
        now = int(time.time() * 1000)
        row = (now, actor.id if actor is not None else None, _text(name), action,
               _text(target), msgspec.json.encode(_cut(detail)).decode(), ip,
               "ok" if ok else "refused")
        statements: list[tuple[str, tuple[Any, ...]]] = [(_INSERT, row)]
        self._since_trim += 1
        if self._since_trim >= TRIM_EVERY:
            self._since_trim = 0
            statements += self._trim(now)
        try:
            await self.store.transaction(statements)
        except Exception:
            log.exception("audit row for %s by %r not written", action, name)

    def _throttle(self, action: str, source: str) -> int | None:
        """None: drop this refusal's row; else how many were dropped before it."""
        if self.refusals_max <= 0:  # no limit
            return 0
        now = int(self.clock() * 1000)
        key = (action, source)
        seen = self._refusals.get(key)
        if seen is None or now - seen[0] >= REFUSAL_WINDOW_MS:
            if seen is None and len(self._refusals) >= REFUSAL_KEYS_MAX:
                self._refusals.clear()
            carried = seen[2] if seen is not None else 0
            self._refusals[key] = [now, 1, 0]
            return carried
        if seen[1] >= self.refusals_max:
            if seen[2] == 0:
                log.warning("audit: more than %d refusals of %s from %s a minute; counting "
                            "the rest", self.refusals_max, action, source or "?")
            seen[2] += 1
            return None
        seen[1] += 1
        carried, seen[2] = seen[2], 0
        return carried

    def _trim(self, now_ms: int) -> list[tuple[str, tuple[Any, ...]]]:
        out: list[tuple[str, tuple[Any, ...]]] = [(
            "DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (self.rows_max,))]
        if self.age_ms_max > 0:
            out.append(("DELETE FROM audit WHERE at_ms < ?", (now_ms - self.age_ms_max,)))
        return out

    async def page(self, *, action: str | None = None, actor: str | None = None,
                   since_ms: int = 0, before_id: int | None = None, limit: int = 100
                   ) -> list[AuditEntry]:
        """Rows matching the filters, newest first; ``before_id`` pages to older ones."""
        where: list[str] = ["at_ms >= ?"]
        args: list[str | int] = [since_ms]
        for column, value in (("action", action), ("actor_name", actor)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        rows = await self.store.reader.execute_fetchall(
            "SELECT id, at_ms, actor_id, actor_name, action, target, detail, ip, outcome"
            f" FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*args, limit))
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], msgspec.json.decode(r[6]),
                           r[7], r[8]) for r in rows]


def _text(value: str) -> str:
    """Cut to ``TEXT_CHARS_MAX``, control characters escaped: a caller chooses the path or
    label an admin later reads in a terminal, so it must not carry escape sequences."""
    value = value[:TEXT_CHARS_MAX]
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _cut(detail: dict[str, Any]) -> dict[str, Any]:
    """Strings (a label, an error message) as ``_text`` makes them."""
    return {k: _text(v) if isinstance(v, str) else v for k, v in detail.items()}
