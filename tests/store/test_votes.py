"""The SQLite store keeps what a restarted core needs to answer re-sent replicas.

Under verification a worker is told ``accepted`` when its result is durably kept as a vote,
and the replica that decides a chunk (or makes it fail) is told so too. After a restart the
core must still recognise all of them, so their re-sends are answered ``accepted`` again:
the store keeps cleared votes (output emptied) and the acks of deciding replicas.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import Event, ResultIn, SessionHello, TaskSubmitted
from coordinator.runtime import restore_core
from coordinator.store.sqlite import SqliteStore
from schema.worker import PROTOCOL_VERSION, Accepted, Welcome


class Booted:
    """A core committing every turn to a real SQLite file, restartable from it."""

    def __init__(self, store: SqliteStore, core: Core) -> None:
        self.store, self.core, self.eid = store, core, 0

    async def run(self, make: type[Event], *args: object, **kw: object) -> list[fx.Effect]:
        self.eid += 1
        effects = self.core.handle(make(self.eid, self.eid, *args, **kw))
        await self.store.apply([e for e in effects if isinstance(e, fx.PERSISTENT)])
        return effects

    async def restart(self, path: Path) -> None:
        await self.store.close()
        self.store = await SqliteStore.open(path)
        epoch = await self.store.next_epoch()
        self.core = await restore_core(Core(CoreConfig(), epoch), self.store, self.eid)


def leases(effects: list[fx.Effect]) -> list[int]:
    return [e.lease_id for e in effects if isinstance(e, fx.AssignChunk)]


def output(n: int) -> bytes:
    return msgspec.msgpack.encode(list(range(n)))


async def quorum_run(path: Path) -> tuple[Booted, dict[str, int]]:
    """A quorum chunk needing 2 agreeing results: w0 and w1 disagree (both held as votes),
    w2 agrees with w0 and decides it. Returns the booted core and each worker's lease."""
    store = await SqliteStore.open(path)
    epoch = await store.next_epoch()
    b = Booted(store, Core(CoreConfig(), epoch))
    await b.run(TaskSubmitted, "t", "c0", "", 1, 1, 1, 1, 3, 60_000, [], "code",
                verification="quorum", quorum_k=2, quorum_m=2, salt="s")
    lease_of: dict[str, int] = {}
    try:
        for worker, out in (("w0", output(1)), ("w1", b"\x91\x05"), ("w2", output(1))):
            [lease] = leases(await b.run(SessionHello, f"s-{worker}", f"acct-{worker}",
                                         worker, [], 1, [], PROTOCOL_VERSION))
            lease_of[worker] = lease
            said = await b.run(ResultIn, f"s-{worker}", lease, out, "d")
            assert any(isinstance(e, fx.Send) and e.message == Accepted(lease, 0)
                       for e in said)
        assert any(isinstance(e, fx.PersistResult) for e in said), "w2 should decide it"
    except BaseException:
        await store.close()
        raise
    return b, lease_of


async def test_every_acknowledged_replica_is_recognised_after_a_restart(tmp_path: Path) -> None:
    b, lease_of = await quorum_run(tmp_path / "db.sqlite3")
    await b.restart(tmp_path / "db.sqlite3")
    try:
        for worker, lease in lease_of.items():
            hello = await b.run(SessionHello, f"s2-{worker}", f"acct-{worker}", worker,
                                [], 1, [lease], PROTOCOL_VERSION)
            [welcome] = [e.message for e in hello if isinstance(e, fx.Send)]
            assert isinstance(welcome, Welcome) and lease not in welcome.dropped, worker
            again = await b.run(ResultIn, f"s2-{worker}", lease, output(1), "d")
            assert [e.message for e in again if isinstance(e, fx.Send)] == [
                Accepted(lease, 0)], worker
        async with aiosqlite.connect(tmp_path / "db.sqlite3") as db:
            rows = await db.execute_fetchall(
                "SELECT lease_id, cleared, length(output) FROM votes ORDER BY lease_id")
        # the two votes, cleared with their outputs dropped, and the deciding replica's ack
        assert [tuple(r) for r in rows] == [(lease_of[w], 1, 0) for w in ("w0", "w1", "w2")]
    finally:
        await b.store.close()


async def test_pending_votes_are_restored_and_recognised(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = await SqliteStore.open(path)
    b = Booted(store, Core(CoreConfig(), await store.next_epoch()))
    await b.run(TaskSubmitted, "t", "c0", "", 1, 1, 1, 1, 3, 60_000, [], "code",
                verification="quorum", quorum_k=2, quorum_m=2, salt="s")
    [lease] = leases(await b.run(SessionHello, "s1", "acct", "w0", [], 1, [],
                                 PROTOCOL_VERSION))
    await b.run(ResultIn, "s1", lease, output(1), "d")
    await b.restart(path)
    try:
        assert lease in b.core.recent_accepted
        assert [v.lease_id for v in b.core.tasks["t"].votes[0]] == [lease]
    finally:
        await b.store.close()


async def test_an_older_votes_table_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with aiosqlite.connect(path) as db:  # the votes table before `cleared` existed
        await db.execute(
            "CREATE TABLE votes (task_id TEXT NOT NULL, chunk_index INTEGER NOT NULL,"
            " lease_id INTEGER PRIMARY KEY, account_id TEXT NOT NULL, worker_id TEXT NOT NULL,"
            " digest TEXT NOT NULL, output BLOB NOT NULL, at_ms INTEGER NOT NULL)")
        await db.execute("INSERT INTO votes VALUES ('t', 0, 7, 'a', 'w', 'd', x'91c0', 5)")
        await db.commit()
    store = await SqliteStore.open(path)
    try:
        assert await store.recent_accepted(10) == [(7, "a/w")]
        async with aiosqlite.connect(path) as db:
            rows = await db.execute_fetchall("SELECT cleared FROM votes")
        assert [tuple(r) for r in rows] == [(0,)]
    finally:
        await store.close()
