"""The live socket (``/ws/live``): snapshots, then coalesced updates, per subscriber.

The core marks tasks changed; every ``live_flush_ms`` the hub encodes each changed task
once and offers the frame to its subscribers' bounded queues. A subscriber whose queue is
full is dropped (close 1013) and must reconnect for a fresh snapshot: a slow dashboard
never slows the coordinator.
"""

from __future__ import annotations

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from coordinator.accounts import Account, Accounts
from coordinator.config import Config
from coordinator.core.core import Core
from coordinator.http_auth import bearer_token
from coordinator.views import task_info
from schema import live as lv

ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder(lv.LiveClientMessage)


class _Sub:
    def __init__(self, account: Account, queue_max: int) -> None:
        self.account = account
        send, recv = anyio.create_memory_object_stream[bytes](queue_max)
        self.send: MemoryObjectSendStream[bytes] = send
        self.recv: MemoryObjectReceiveStream[bytes] = recv
        self.topics: set[str] = set()

    def push(self, frame: bytes) -> None:
        try:
            self.send.send_nowait(frame)
        except (anyio.WouldBlock, anyio.ClosedResourceError):
            self.send.close()  # too slow: its writer ends the socket


class Hub:
    def __init__(self, core: Core, config: Config) -> None:
        self.core = core
        self.config = config
        self.topics: dict[str, set[_Sub]] = {}
        self.dirty: set[str] = set()

    def mark(self, task_id: str) -> None:
        self.dirty.add(task_id)

    def frame(self, task_id: str) -> bytes | None:
        task = self.core.tasks.get(task_id)
        return None if task is None else ENCODER.encode(lv.TaskUpdate(task_info(self.core, task)))

    async def flusher(self) -> None:
        while True:
            await anyio.sleep(self.config.live_flush_ms / 1000)
            self.flush()

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for task_id in dirty:
            task = self.core.tasks.get(task_id)
            if task is None:
                continue
            subs = (
                self.topics.get(f"task:{task_id}", set())
                | self.topics.get(f"tasks:{task.owner}", set())
                | self.topics.get("tasks:*", set())
            )
            if not subs:
                continue
            frame = ENCODER.encode(lv.TaskUpdate(task_info(self.core, task)))
            for sub in subs:
                sub.push(frame)

    def may_see(self, account: Account, task_id: str) -> bool:
        task = self.core.tasks.get(task_id)
        return task is not None and (account.role == "admin" or task.owner == account.id)

    def subscribe(self, sub: _Sub, topic: str) -> str | None:
        """Subscribe, queue the snapshot, and return None; or return why not."""
        if topic == "tasks":
            key = "tasks:*" if sub.account.role == "admin" else f"tasks:{sub.account.id}"
            snapshot = [
                t.id for t in self.core.tasks.values()
                if sub.account.role == "admin" or t.owner == sub.account.id
            ]
        elif topic.startswith("task:") and self.may_see(sub.account, topic[5:]):
            key, snapshot = topic, [topic[5:]]
        else:
            return "no such topic, or not yours to watch"
        self.topics.setdefault(key, set()).add(sub)
        sub.topics.add(key)
        for task_id in snapshot:
            frame = self.frame(task_id)
            if frame is not None:
                sub.push(frame)
        return None

    def unsubscribe(self, sub: _Sub, topics: list[str] | None = None) -> None:
        for key in list(sub.topics):
            if topics is None or key in topics or (key.startswith("tasks:") and "tasks" in topics):
                self.topics.get(key, set()).discard(sub)
                sub.topics.discard(key)


class LiveEndpoint:
    def __init__(self, hub: Hub, accounts: Accounts, config: Config) -> None:
        self.hub = hub
        self.accounts = accounts
        self.config = config

    async def __call__(self, ws: WebSocket) -> None:
        token = bearer_token(ws.headers)
        account = await self.accounts.authenticate(token) if token else None
        if account is None:
            await ws.close(1008, "sign in: send Authorization: Bearer <token>")
            return
        await ws.accept()
        sub = _Sub(account, self.config.live_queue_max)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, ws, sub, tg.cancel_scope)
                await self._reader(ws, sub)
                tg.cancel_scope.cancel()
        finally:
            self.hub.unsubscribe(sub)

    async def _reader(self, ws: WebSocket, sub: _Sub) -> None:
        while True:
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                return
            text = raw.get("text")
            try:
                if text is None or len(text) > 65536:
                    raise msgspec.ValidationError("send JSON text frames of at most 64 KiB")
                msg = DECODER.decode(text)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                sub.push(ENCODER.encode(lv.LiveError(f"malformed message: {exc}")))
                continue
            if isinstance(msg, lv.Subscribe):
                for topic in msg.topics:
                    why = self.hub.subscribe(sub, topic)
                    if why is not None:
                        sub.push(ENCODER.encode(lv.LiveError(why, topic)))
            else:
                self.hub.unsubscribe(sub, msg.topics)

    async def _writer(self, ws: WebSocket, sub: _Sub, scope: anyio.CancelScope) -> None:
        try:
            async for frame in sub.recv:
                await ws.send_text(frame.decode())
            await ws.close(1013, "too slow to keep up; reconnect for a fresh snapshot")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        scope.cancel()
