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
from coordinator.core.state import Task, worker_key

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
    created_ms INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'running', finished_ms INTEGER
);
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
"""

_INSERT_TASK = (
    "INSERT INTO tasks (id, owner, name, chunks_total, items_total, chunk_size, max_concurrency,"
    " max_attempts, chunk_timeout_ms, requirements, code_ref, created_ms)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_RESULT = (
    "INSERT INTO results (task_id, chunk_index, lease_id, account_id, worker_id, output, digest,"
    " items, at_ms) VALUES (?,?,?,?,?,?,?,?,?)"
)
_INSERT_FAILURE = (
    "INSERT INTO failures (task_id, chunk_index, lease_id, account_id, worker_id, error, final,"
    " at_ms) VALUES (?,?,?,?,?,?,?,?)"
)


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
                    ))
                case fx.PersistTaskState():
                    states.append((e.state, e.finished_ms, e.task_id))
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
            " finished_ms FROM tasks ORDER BY created_ms"
        )
        for r in rows:
            task = Task(
                id=r[0], owner=r[1], name=r[2], chunks_total=r[3], items_total=r[4],
                chunk_size=r[5], max_concurrency=r[6], max_attempts=r[7],
                chunk_timeout_ms=r[8], requirements=json.loads(r[9]), code_ref=r[10],
                created_ms=r[11], state=TaskState[str(r[12]).upper()], finished_ms=r[13],
            )
            done = [
                (int(c), int(n)) for c, n in await self.db.execute_fetchall(
                    "SELECT chunk_index, items FROM results WHERE task_id = ?", (task.id,)
                )
            ]
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

    async def recent_accepted(self, limit: int) -> list[tuple[int, str]]:
        rows = await self.db.execute_fetchall(
            "SELECT lease_id, account_id, worker_id FROM results ORDER BY at_ms DESC LIMIT ?",
            (limit,),
        )
        return [(int(r[0]), worker_key(r[1], r[2])) for r in reversed(list(rows))]

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

    async def chunk_workers(self, task_id: str, lo: int, hi: int) -> dict[int, str]:
        rows = await self.reader.execute_fetchall(
            "SELECT chunk_index, worker_id FROM results WHERE task_id = ?"
            " AND chunk_index >= ? AND chunk_index < ?",
            (task_id, lo, hi),
        )
        return {int(r[0]): str(r[1]) for r in rows}

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self.reader.execute(sql, args) as cur:
            return await cur.fetchone()
