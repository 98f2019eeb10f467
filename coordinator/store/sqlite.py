"""SQLite persistence (the embedded default): WAL, group commits, one connection.

``apply`` writes one turn's persistence effects in a single transaction with ``executemany``
per table. WAL with ``synchronous=NORMAL`` keeps every commit across a killed process (the
write is in the OS before commit returns); an OS crash may lose the last few commits, which
were then never acknowledged either, because acknowledgements wait for the commit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from coordinator.core import effects as fx
from coordinator.core.state import Task, Vote, worker_key
from coordinator.core.treasury import Withdrawal

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('customer', 'worker', 'admin')),
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id),
    label TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL,
    expires_ms INTEGER, revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL,
    chunks_total INTEGER NOT NULL, items_total INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    max_concurrency INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
    chunk_timeout_ms INTEGER NOT NULL, requirements TEXT NOT NULL, code_ref TEXT NOT NULL,
    created_ms INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'running', finished_ms INTEGER,
    price_per_chunk INTEGER NOT NULL DEFAULT 0, budget INTEGER NOT NULL DEFAULT 0,
    max_spend_per_minute INTEGER NOT NULL DEFAULT 0, priority INTEGER NOT NULL DEFAULT 5,
    verification TEXT NOT NULL DEFAULT 'none', quorum_k INTEGER NOT NULL DEFAULT 1,
    quorum_m INTEGER NOT NULL DEFAULT 1, spot_per_mille INTEGER NOT NULL DEFAULT 0,
    salt TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS votes (
    task_id TEXT NOT NULL, chunk_index INTEGER NOT NULL, lease_id INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL, worker_id TEXT NOT NULL, digest TEXT NOT NULL,
    output BLOB NOT NULL, at_ms INTEGER NOT NULL,
    -- 1 once the chunk's verdict no longer needs it: the row stays (its output emptied)
    -- because its worker was told `accepted` and may re-send after a restart
    cleared INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS votes_chunk ON votes(task_id, chunk_index);
CREATE INDEX IF NOT EXISTS votes_at ON votes(at_ms);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks(owner, created_ms);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT NOT NULL, chunk_index INTEGER NOT NULL, lease_id INTEGER NOT NULL,
    account_id TEXT NOT NULL, worker_id TEXT NOT NULL, output BLOB NOT NULL,
    digest TEXT NOT NULL, items INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, chunk_index)
);
CREATE INDEX IF NOT EXISTS results_at ON results(at_ms);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY, task_id TEXT NOT NULL, chunk_index INTEGER NOT NULL,
    lease_id INTEGER NOT NULL, account_id TEXT NOT NULL, worker_id TEXT NOT NULL,
    error TEXT NOT NULL, final INTEGER NOT NULL, at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_chunk ON failures(task_id, chunk_index);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, at_ms INTEGER NOT NULL, key TEXT UNIQUE,
    task_id TEXT, chunk_index INTEGER, lease_id INTEGER, memo TEXT NOT NULL DEFAULT ''
);
-- a chunk's lease is paid once, whatever the core did (a second guard behind the core's own)
CREATE UNIQUE INDEX IF NOT EXISTS payout_once ON transfers(lease_id) WHERE kind = 'payout';
CREATE INDEX IF NOT EXISTS transfers_task ON transfers(task_id);
CREATE TABLE IF NOT EXISTS entries (
    transfer_id INTEGER NOT NULL REFERENCES transfers(id), account TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (typeof(amount) = 'integer')
);
CREATE INDEX IF NOT EXISTS entries_account ON entries(account, transfer_id);
CREATE TABLE IF NOT EXISTS balances (
    account TEXT PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (typeof(balance) = 'integer' AND
                                    (account = 'world' OR balance >= 0))
);
CREATE TABLE IF NOT EXISTS withdrawals (
    id INTEGER PRIMARY KEY, account_id TEXT NOT NULL, amount INTEGER NOT NULL,
    state TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
"""

_INSERT_TASK = (
    "INSERT INTO tasks (id, owner, name, chunks_total, items_total, chunk_size, max_concurrency,"
    " max_attempts, chunk_timeout_ms, requirements, code_ref, created_ms, price_per_chunk,"
    " budget, max_spend_per_minute, priority, verification, quorum_k, quorum_m,"
    " spot_per_mille, salt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_CLEAR_VOTES = "UPDATE votes SET cleared = 1, output = x'' WHERE cleared = 0 AND task_id = ?"
_INSERT_TRANSFER = (
    "INSERT INTO transfers (id, kind, at_ms, key, task_id, chunk_index, lease_id, memo)"
    " VALUES (?,?,?,?,?,?,?,?)"
)
# Two steps, not one upsert: SQLite checks CHECK constraints on the row an upsert would
# insert before it sees the conflict, so a debit (a negative delta) of an existing account
# failed "balance >= 0". The UPDATE is checked on the account's new balance.
_OPEN_BALANCE = "INSERT INTO balances (account, balance) VALUES (?, 0) ON CONFLICT DO NOTHING"
_ADD_BALANCE = "UPDATE balances SET balance = balance + ? WHERE account = ?"
_UPSERT_WITHDRAWAL = (
    "INSERT INTO withdrawals (id, account_id, amount, state, created_ms, updated_ms)"
    " VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET state = excluded.state,"
    " updated_ms = excluded.updated_ms"
)
_INSERT_RESULT = (
    "INSERT INTO results (task_id, chunk_index, lease_id, account_id, worker_id, output, digest,"
    " items, at_ms) VALUES (?,?,?,?,?,?,?,?,?)"
)
_INSERT_FAILURE = (
    "INSERT INTO failures (task_id, chunk_index, lease_id, account_id, worker_id, error, final,"
    " at_ms) VALUES (?,?,?,?,?,?,?,?)"
)


_TASK_COLUMNS_ADDED = {
    "price_per_chunk": "INTEGER NOT NULL DEFAULT 0",
    "budget": "INTEGER NOT NULL DEFAULT 0",
    "max_spend_per_minute": "INTEGER NOT NULL DEFAULT 0",
    "priority": "INTEGER NOT NULL DEFAULT 5",
    "verification": "TEXT NOT NULL DEFAULT 'none'",
    "quorum_k": "INTEGER NOT NULL DEFAULT 1",
    "quorum_m": "INTEGER NOT NULL DEFAULT 1",
    "spot_per_mille": "INTEGER NOT NULL DEFAULT 0",
    "salt": "TEXT NOT NULL DEFAULT ''",
}


_COLUMNS_ADDED = {
    "tasks": _TASK_COLUMNS_ADDED,
    "votes": {"cleared": "INTEGER NOT NULL DEFAULT 0"},
}


async def _migrate(db: aiosqlite.Connection) -> None:
    """Bring a database made by an older version up to this schema."""
    for table, added in _COLUMNS_ADDED.items():
        have = {str(r[1]) for r in await db.execute_fetchall(f"PRAGMA table_info({table})")}
        for column, decl in added.items():
            if column not in have:
                await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    await db.execute("CREATE INDEX IF NOT EXISTS votes_at ON votes(at_ms)")


class SqliteStore:
    """``db`` writes (one transaction at a time, under ``write_lock``); ``reader`` serves
    queries and sees only committed data."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.db = db
        self.reader = reader
        self.write_lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.executescript(SCHEMA)
        await _migrate(db)
        reader = await aiosqlite.connect(path, isolation_level=None)
        await reader.execute("PRAGMA query_only=ON")
        return cls(db, reader)

    async def close(self) -> None:
        await self.reader.close()
        await self.db.close()

    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run ``statements`` in one write transaction."""
        async with self.write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    await self.db.execute(sql, args)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def next_epoch(self) -> int:
        """A number that grows with every start; lease ids are drawn under it."""
        row = await self.one("SELECT value FROM meta WHERE key = 'epoch'")
        epoch = int(row[0]) + 1 if row else 1
        await self.transaction(
            [("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (str(epoch),))]
        )
        return epoch

    # ---- group commit -----------------------------------------------------------------

    async def apply(self, effects: Sequence[fx.Effect]) -> None:
        tasks, states, results, failures = [], [], [], []
        transfers: list[tuple[object, ...]] = []
        entries: list[tuple[int, str, int]] = []
        withdrawals: list[tuple[object, ...]] = []
        settings: list[tuple[int, int, str]] = []
        votes: list[tuple[object, ...]] = []
        cleared: list[tuple[str, int | None]] = []
        for e in effects:
            match e:
                case fx.PersistResult():
                    results.append((
                        e.task_id, e.chunk_index, e.lease_id, e.account_id, e.worker_id,
                        e.output, e.digest, e.items, e.at_ms,
                    ))
                case fx.PersistFailure():
                    failures.append((
                        e.task_id, e.chunk_index, e.lease_id, e.account_id, e.worker_id,
                        e.error, int(e.final), e.at_ms,
                    ))
                case fx.PersistTask():
                    tasks.append((
                        e.task_id, e.owner, e.name, e.chunks_total, e.items_total,
                        e.chunk_size, e.max_concurrency, e.max_attempts, e.chunk_timeout_ms,
                        json.dumps(e.requirements), e.code_ref, e.created_ms,
                        e.price_per_chunk, e.budget, e.max_spend_per_minute, e.priority,
                        e.verification, e.quorum_k, e.quorum_m, e.spot_per_mille, e.salt,
                    ))
                case fx.PersistTaskState():
                    states.append((e.state, e.finished_ms, e.task_id))
                case fx.PersistTransfer():
                    transfers.append((e.id, e.kind, e.at_ms, e.key, e.task_id, e.chunk,
                                      e.lease_id, e.memo))
                    entries.extend((e.id, account, amount) for account, amount in e.entries)
                case fx.PersistTaskSettings():
                    settings.append((e.max_concurrency, e.priority, e.task_id))
                case fx.PersistVote():
                    votes.append((e.task_id, e.chunk_index, e.lease_id, e.account_id,
                                  e.worker_id, e.digest, e.output, e.at_ms, 0))
                case fx.PersistAck():  # a vote row born cleared (see _CLEAR_VOTES)
                    votes.append((e.task_id, e.chunk_index, e.lease_id, e.account_id,
                                  e.worker_id, e.digest, b"", e.at_ms, 1))
                case fx.PersistVotesCleared():
                    cleared.append((e.task_id, e.chunk_index))
                case fx.PersistWithdrawal():
                    withdrawals.append((e.id, e.account_id, e.amount, e.state, e.created_ms,
                                        e.updated_ms))
        db = self.db
        async with self.write_lock:
            await db.execute("BEGIN")
            try:
                if tasks:
                    await db.executemany(_INSERT_TASK, tasks)
                if results:
                    await db.executemany(_INSERT_RESULT, results)
                if failures:
                    await db.executemany(_INSERT_FAILURE, failures)
                if states:
                    await db.executemany(
                        "UPDATE tasks SET state = ?, finished_ms = ? WHERE id = ?", states
                    )
                if transfers:
                    await db.executemany(_INSERT_TRANSFER, transfers)
                    await db.executemany(
                        "INSERT INTO entries (transfer_id, account, amount) VALUES (?,?,?)",
                        entries)
                    await db.executemany(_OPEN_BALANCE, [(a,) for _, a, _ in entries])
                    await db.executemany(_ADD_BALANCE, [(n, a) for _, a, n in entries])
                if withdrawals:
                    await db.executemany(_UPSERT_WITHDRAWAL, withdrawals)
                if settings:
                    await db.executemany(
                        "UPDATE tasks SET max_concurrency = ?, priority = ? WHERE id = ?",
                        settings)
                if votes:
                    await db.executemany(
                        "INSERT INTO votes (task_id, chunk_index, lease_id, account_id,"
                        " worker_id, digest, output, at_ms, cleared)"
                        " VALUES (?,?,?,?,?,?,?,?,?)", votes)
                for task_id, chunk in cleared:  # after inserts: a turn may add then clear
                    if chunk is None:
                        await db.execute(_CLEAR_VOTES, (task_id,))
                    else:
                        await db.execute(_CLEAR_VOTES + " AND chunk_index = ?",
                                         (task_id, chunk))
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    # ---- restart ----------------------------------------------------------------------

    async def load_tasks(self) -> AsyncIterator[tuple[Task, list[tuple[int, int]],
                                                      dict[int, str], dict[int, int]]]:
        from coordinator.core.lifecycle import TaskState

        rows = await self.db.execute_fetchall(
            "SELECT id, owner, name, chunks_total, items_total, chunk_size, max_concurrency,"
            " max_attempts, chunk_timeout_ms, requirements, code_ref, created_ms, state,"
            " finished_ms, price_per_chunk, budget, max_spend_per_minute, priority,"
            " verification, quorum_k, quorum_m, spot_per_mille, salt"
            " FROM tasks ORDER BY created_ms"
        )
        for r in rows:
            task = Task(
                id=r[0], owner=r[1], name=r[2], chunks_total=r[3], items_total=r[4],
                chunk_size=r[5], max_concurrency=r[6], max_attempts=r[7],
                chunk_timeout_ms=r[8], requirements=json.loads(r[9]), code_ref=r[10],
                created_ms=r[11], state=TaskState[str(r[12]).upper()], finished_ms=r[13],
                price=r[14], budget=r[15], max_spend_per_minute=r[16], priority=r[17],
                verification=r[18], quorum_k=r[19], quorum_m=r[20], spot_per_mille=r[21],
                salt=r[22],
            )
            for v in await self.db.execute_fetchall(
                "SELECT chunk_index, lease_id, account_id, worker_id, digest, output, at_ms"
                " FROM votes WHERE task_id = ? AND cleared = 0 ORDER BY lease_id", (task.id,)
            ):
                task.votes.setdefault(int(v[0]), []).append(
                    Vote(int(v[1]), str(v[2]), str(v[3]), str(v[4]), fx.Output(v[5]), int(v[6])))
                task.votes_held += 1
            done = [
                (int(c), int(n)) for c, n in await self.db.execute_fetchall(
                    "SELECT chunk_index, items FROM results WHERE task_id = ?", (task.id,)
                )
            ]
            spent = await self.one(
                "SELECT COALESCE(-SUM(e.amount), 0) FROM transfers t JOIN entries e"
                " ON e.transfer_id = t.id WHERE t.task_id = ? AND t.kind = 'payout'"
                " AND e.account = ?", (task.id, f"escrow:{task.id}"))
            task.spent = int(spent[0])
            failed: dict[int, str] = {}
            failures: dict[int, int] = {}
            for chunk, error, final in await self.db.execute_fetchall(
                "SELECT chunk_index, error, final FROM failures WHERE task_id = ? ORDER BY id",
                (task.id,),
            ):
                failures[chunk] = failures.get(chunk, 0) + 1
                if final:
                    failed[chunk] = error
            yield task, done, failed, failures

    async def load_money(self) -> tuple[dict[str, int], list[str], int, int, list[Withdrawal]]:
        """Balances, idempotency keys, deposits and withdrawals ever, pending withdrawals."""
        read = self.reader.execute_fetchall
        balances = {str(a): int(b) for a, b in await read("SELECT account, balance FROM balances")}
        keys = [str(k) for (k,) in await read("SELECT key FROM transfers WHERE key IS NOT NULL")]
        row = await self.one(
            "SELECT COALESCE(SUM(CASE WHEN amount < 0 THEN -amount END), 0),"
            " COALESCE(SUM(CASE WHEN amount > 0 THEN amount END), 0)"
            " FROM entries WHERE account = 'world'"
        )
        pending = [
            Withdrawal(int(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4]))
            for r in await read("SELECT id, account_id, amount, state, created_ms"
                                " FROM withdrawals WHERE state = 'pending'")
        ]
        return balances, keys, int(row[0]), int(row[1]), pending

    async def recent_payouts(self, since_ms: int) -> list[tuple[str, int, int]]:
        """Payouts since ``since_ms`` as (task, at_ms, amount), oldest first."""
        rows = await self.db.execute_fetchall(
            "SELECT t.task_id, t.at_ms, -e.amount FROM transfers t JOIN entries e"
            " ON e.transfer_id = t.id WHERE t.kind = 'payout' AND t.at_ms >= ?"
            " AND e.account = 'escrow:' || t.task_id ORDER BY t.at_ms, t.id", (since_ms,))
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def recent_accepted(self, limit: int) -> list[tuple[int, str]]:
        """The ``limit`` latest leases whose workers were told ``accepted``, oldest first:
        results, and under verification every replica's vote (cleared ones included)."""
        rows: list[tuple[int, int, str]] = []
        for table in ("results", "votes"):
            rows += [(int(r[3]), int(r[0]), worker_key(r[1], r[2]))
                     for r in await self.db.execute_fetchall(
                         f"SELECT lease_id, account_id, worker_id, at_ms FROM {table}"
                         " ORDER BY at_ms DESC LIMIT ?", (limit,))]
        rows.sort()
        return [(lease, key) for _, lease, key in rows[-limit:]]

    # ---- queries ----------------------------------------------------------------------

    async def result_rows(
        self, task_id: str, after: int, limit: int
    ) -> list[tuple[int, bytes]]:
        rows = await self.reader.execute_fetchall(
            "SELECT chunk_index, output FROM results WHERE task_id = ? AND chunk_index > ?"
            " ORDER BY chunk_index LIMIT ?",
            (task_id, after, limit),
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def chunk_history(
        self, task_id: str, chunk: int
    ) -> tuple[list[tuple[int, str, str, bool]], bytes | None]:
        """A chunk's failed attempts (at_ms, worker, error, final) and its output, if any."""
        rows = await self.reader.execute_fetchall(
            "SELECT at_ms, worker_id, error, final FROM failures WHERE task_id = ?"
            " AND chunk_index = ? ORDER BY id LIMIT 100", (task_id, chunk))
        out = await self.one("SELECT output FROM results WHERE task_id = ? AND chunk_index = ?",
                             (task_id, chunk))
        return ([(int(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in rows],
                None if out is None else bytes(out[0]))

    async def chunk_workers(self, task_id: str, lo: int, hi: int) -> dict[int, str]:
        rows = await self.reader.execute_fetchall(
            "SELECT chunk_index, worker_id FROM results WHERE task_id = ?"
            " AND chunk_index >= ? AND chunk_index < ?",
            (task_id, lo, hi),
        )
        return {int(r[0]): str(r[1]) for r in rows}

    # ---- money queries (what the in-memory ledger does not keep) -----------------------

    async def account_ids(self) -> list[str]:
        rows = await self.reader.execute_fetchall("SELECT id FROM accounts ORDER BY created_ms")
        return [str(r[0]) for r in rows]

    async def account_exists(self, account_id: str) -> bool:
        return await self.one("SELECT 1 FROM accounts WHERE id = ?", (account_id,)) is not None

    async def transfer_id(self, key: str) -> int | None:
        """The id of the transfer made under idempotency ``key``, if it committed."""
        row = await self.one("SELECT id FROM transfers WHERE key = ?", (key,))
        return None if row is None else int(row[0])

    async def entries_page(self, accounts: Sequence[str], offset: int, limit: int
                           ) -> list[tuple[int, str, str, int, int, str | None, int | None, str]]:
        """Entries on ``accounts``, newest first: (transfer id, kind, account, amount, at_ms,
        task_id, chunk, memo)."""
        marks = ",".join("?" * len(accounts))
        rows = await self.reader.execute_fetchall(
            "SELECT t.id, t.kind, e.account, e.amount, t.at_ms, t.task_id, t.chunk_index, t.memo"
            f" FROM entries e JOIN transfers t ON t.id = e.transfer_id WHERE e.account IN ({marks})"
            " ORDER BY e.transfer_id DESC, e.account LIMIT ? OFFSET ?",
            (*accounts, limit, offset),
        )
        return [(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), r[5], r[6], str(r[7]))
                for r in rows]

    async def earnings(self, account: str) -> list[tuple[str, int, int]]:
        """(task_id, chunks paid, credited) of the payouts to ``account``, oldest task first."""
        rows = await self.reader.execute_fetchall(
            "SELECT t.task_id, COUNT(*), SUM(e.amount) FROM entries e"
            " JOIN transfers t ON t.id = e.transfer_id"
            " WHERE e.account = ? AND t.kind = 'payout' GROUP BY t.task_id ORDER BY MIN(t.id)",
            (account,),
        )
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self.reader.execute(sql, args) as cur:
            return await cur.fetchone()
