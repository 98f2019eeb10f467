"""Drives the core: stamps events with time and ids, runs ``core.handle`` and applies effects.

Two stages, each a task in the app's task group:

- the core loop takes a batch of queued events, handles each (synchronously, no ``await``
  between a decision and its effects) and hands the batch's effects to the commit stage;
- the commit stage writes all persistence effects waiting for it in one transaction, then
  sends the batch's messages and answers its waiters. Nothing is acknowledged before its
  commit; the core goes on deciding while the disk works.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import EpochStarted, Event, Tick
from coordinator.recorder import Journal
from coordinator.store.sqlite import SqliteStore

EPOCH_REFILL_AT = 1 << 30  # lease ids left in the epoch when a new one is asked for


class Clock:
    """Wall-clock milliseconds that never run backwards (anchored on the monotonic clock)."""

    def __init__(self) -> None:
        self._base = time.time_ns() // 1_000_000 - time.monotonic_ns() // 1_000_000

    def now_ms(self) -> int:
        return self._base + time.monotonic_ns() // 1_000_000


@dataclass
class Reply:
    ok: bool
    error: str = ""
    status: int = 200
    value: int = 0


@dataclass
class _Waiter:
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Reply | None = None


# one core turn: its effects, the events with waiters, and the last event id it handled
_Turn = tuple[list[fx.Effect], list[int], int]


class Outbox:
    """Where effects go after their commit (implemented by the app's adapters)."""

    def dispatch(self, effect: fx.Effect) -> None:
        raise NotImplementedError


async def restore_core(core: Core, store: SqliteStore, now_ms: int) -> Core:
    """Hand a freshly booted ``core`` what the store kept: tasks (with their votes, results
    and failures), the leases recently acknowledged, the books, the last minute's spending."""
    async for task, done, failed, failures in store.load_tasks():
        core.restore_task(task, done, failed, failures)
    core.restore_accepted(await store.recent_accepted(core.config.recent_accepted_max))
    core.restore_money(*await store.load_money())
    core.restore_spending(await store.recent_payouts(now_ms - 60_000))
    return core


class Runtime:
    def __init__(
        self,
        core: Core,
        store: SqliteStore,
        outbox: Outbox,
        *,
        tick_ms: int,
        batch_max: int,
        queue_max: int = 65536,
        journal: Journal | None = None,
    ) -> None:
        self.core = core
        self.store = store
        self.outbox = outbox
        self.clock = Clock()
        self.tick_ms = tick_ms
        self.batch_max = batch_max
        self.journal = journal
        self._eid = 0
        self._waiters: dict[int, _Waiter] = {}
        self._in_send, self._in_recv = anyio.create_memory_object_stream[
            tuple[Event, _Waiter | None]
        ](queue_max)
        send, recv = anyio.create_memory_object_stream[_Turn](64)
        self._commit_send: MemoryObjectSendStream[_Turn] = send
        self._commit_recv: MemoryObjectReceiveStream[_Turn] = recv
        self.events_handled = 0
        self._committed = 0  # the last event whose effects are committed and dispatched
        self._flush_waiters: list[tuple[int, anyio.Event]] = []

    # ---- submitting events ------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Queue an event (fire and forget); raises anyio.WouldBlock when overloaded."""
        self._in_send.send_nowait((event, None))

    async def enqueue(self, event: Event) -> None:
        """Queue an event, waiting for room (backpressure on the caller's connection)."""
        try:
            self._in_send.send_nowait((event, None))
        except anyio.WouldBlock:
            await self._in_send.send((event, None))

    async def call(self, event: Event) -> Reply:
        """Queue an event and wait until its effects are committed; returns its reply."""
        waiter = _Waiter()
        await self._in_send.send((event, waiter))
        await waiter.done.wait()
        return waiter.reply or Reply(ok=True)

    async def flushed(self) -> None:
        """Wait until every event handled before this call is committed, so what a reader
        then sees of the core's state is durable."""
        target = self._eid
        if self._committed >= target:
            return
        done = anyio.Event()
        self._flush_waiters.append((target, done))
        await done.wait()

    def _stamp(self, event: Event) -> Event:
        self._eid += 1
        return msgspec.structs.replace(event, eid=self._eid, at_ms=self.clock.now_ms())

    # ---- the two stages ---------------------------------------------------------------

    def start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._core_loop)
        tg.start_soon(self._commit_loop)
        tg.start_soon(self._ticker)

    async def _ticker(self) -> None:
        while True:
            await anyio.sleep(self.tick_ms / 1000)
            with contextlib.suppress(anyio.WouldBlock):  # full of work: the next tick will do
                self.post(Tick(0, 0))

    async def _core_loop(self) -> None:
        recv = self._in_recv
        while True:
            batch = [await recv.receive()]
            while len(batch) < self.batch_max:
                try:
                    batch.append(recv.receive_nowait())
                except anyio.WouldBlock:
                    break
            effects: list[fx.Effect] = []
            waited: list[int] = []
            for raw, waiter in batch:
                event = self._stamp(raw)
                if waiter is not None:
                    self._waiters[event.eid] = waiter
                    waited.append(event.eid)
                out = self.core.handle(event)
                if self.journal is not None:
                    self.journal.record(self.core, event, out)
                effects.extend(out)
            self.events_handled += len(batch)
            if self.core.lease_ids_left < EPOCH_REFILL_AT:
                self.post(EpochStarted(0, 0, await self.store.next_epoch()))
            await self._commit_send.send((effects, waited, self._eid))
            if self.journal is not None:  # after the turn is on its way to the commit
                self.journal.maybe_flush(event.at_ms)

    async def _commit_loop(self) -> None:
        recv = self._commit_recv
        while True:
            turns = [await recv.receive()]
            while True:
                try:
                    turns.append(recv.receive_nowait())
                except anyio.WouldBlock:
                    break
            persist = [
                e for effects, _, _ in turns for e in effects if isinstance(e, fx.PERSISTENT)
            ]
            if persist:
                with anyio.CancelScope(shield=True):
                    await self.store.apply(persist)
            for effects, waited, _ in turns:
                for e in effects:
                    if isinstance(e, fx.Reply):
                        w = self._waiters.get(e.cause)
                        if w is not None:
                            w.reply = Reply(e.ok, e.error, e.status, e.value)
                    elif not isinstance(e, fx.PERSISTENT):
                        self.outbox.dispatch(e)
                for eid in waited:
                    w = self._waiters.pop(eid, None)
                    if w is not None:
                        w.done.set()
            self._committed = turns[-1][2]
            if self._flush_waiters:
                still = []
                for target, done in self._flush_waiters:
                    if target <= self._committed:
                        done.set()
                    else:
                        still.append((target, done))
                self._flush_waiters = still
