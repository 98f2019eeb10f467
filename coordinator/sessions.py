"""Worker sessions: the WebSocket adapter between ``tn-worker`` and the core.

Each session has a bounded outbound queue drained by its own writer; the reader decodes
MessagePack frames into events. Bad frames get an ``error`` reply; a session that keeps
sending them is closed with 1008. A worker too slow to take its messages is closed (1013)
rather than letting its queue grow.

Limits (coordinator/limits.py): a session sending more than ``worker_messages_per_s`` is
read slower, never cut off: the reader stops taking frames until its bucket refills, the
server stops reading the socket and TCP pushes back on the worker, so nothing it sent is
dropped. An account may hold ``worker_sessions_per_account_max`` sessions at once; one more
is closed with 1008 and the reason (``tn-worker`` backs off and retries). Sessions remember
the hash and expiry of the token they said hello with: revoking it closes them
(``close_token``), and so does its expiry (``close_expired``, swept by the app about once a
second, so the read path pays nothing). A token revoked while its hello was being checked is
caught when the session is registered (the accounts remember recent revocations).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect

from coordinator.accounts import Accounts, Credential, expired_reason
from coordinator.artifacts import TaskArtifacts
from coordinator.config import Config
from coordinator.core import effects as fx
from coordinator.core.events import (
    Event,
    FailIn,
    HeartbeatIn,
    ProgressIn,
    ResultIn,
    SessionClosed,
    SessionHello,
    WhyIdleIn,
)
from coordinator.limits import TokenBucket
from coordinator.parsing import DECODE_ERRORS
from coordinator.runtime import Runtime
from coordinator.sessionlogs import IN, OUT, SessionLog, SessionLogs
from schema import worker as w

_log = logging.getLogger("tn.sessions")
ENCODER = msgspec.msgpack.Encoder()
DECODER = msgspec.msgpack.Decoder(w.WorkerMessage)
TOKEN_REVOKED = "token revoked; get a new token (tn token create)"

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_OVERLOADED = 1013


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


Outgoing = bytes | _Close


class _Conn:
    def __init__(self, queue_max: int, account_id: str, token_hash: str,
                 expires_ms: int | None) -> None:
        send, recv = anyio.create_memory_object_stream[Outgoing](queue_max)
        self.send: MemoryObjectSendStream[Outgoing] = send
        self.recv: MemoryObjectReceiveStream[Outgoing] = recv
        self.closing = False
        self.log: SessionLog | None = None
        self.account_id = account_id
        self.token_hash = token_hash
        self.expires_ms = expires_ms  # the token's expiry (None: never)

    def put(self, item: Outgoing) -> bool:
        if self.closing:
            return True
        try:
            self.send.send_nowait(item)
            return True
        except anyio.WouldBlock:
            return False


class WorkerSessions:
    def __init__(
        self,
        config: Config,
        accounts: Accounts,
        runtime: Runtime,
        artifacts: Callable[[str], TaskArtifacts],
        epoch: int,
        logs: SessionLogs | None = None,
    ) -> None:
        self.config = config
        self.logs = logs
        self.accounts = accounts
        self.runtime = runtime
        self.artifacts = artifacts
        self.epoch = epoch
        self._ids = itertools.count(1)
        self.conns: dict[str, _Conn] = {}
        self._per_account: dict[str, int] = {}  # open sessions by account

    # ---- effects from the core (called after commit) ----------------------------------

    def send(self, session_id: str, message: w.CoordinatorMessage) -> None:
        self._put(session_id, message)

    def assign(self, e: fx.AssignChunk) -> None:
        if e.session_id in self.conns:
            items = self.artifacts(e.task_id).read_chunk(e.chunk_index)
            msg = w.Assign(
                e.lease_id, e.task_id, e.chunk_index, e.code_ref, msgspec.Raw(items),
                e.deadline_ms, e.attempt,
            )
            self._put(e.session_id, msg)

    def close(self, session_id: str, code: int, reason: str) -> None:
        conn = self.conns.get(session_id)
        if conn is not None and not conn.closing:
            if not conn.put(_Close(code, reason)):
                conn.send.close()  # no room for the close: the writer closes 1013
            conn.closing = True

    def close_token(self, token_hash: str) -> int:
        """Close (1008) every session that said hello with this token: it was revoked.
        Returns how many there were."""
        doomed = [sid for sid, conn in self.conns.items() if conn.token_hash == token_hash]
        for sid in doomed:
            self.close(sid, CLOSE_POLICY, TOKEN_REVOKED)
        return len(doomed)

    def close_expired(self, now_ms: int) -> int:
        """Close (1008) every session whose token has expired by ``now_ms``; how many."""
        doomed = [(sid, conn.expires_ms) for sid, conn in self.conns.items()
                  if conn.expires_ms is not None and conn.expires_ms <= now_ms
                  and not conn.closing]
        for sid, expires_ms in doomed:
            self.close(sid, CLOSE_POLICY, expired_reason(expires_ms))
        return len(doomed)

    def _put(self, session_id: str, message: w.CoordinatorMessage) -> None:
        conn = self.conns.get(session_id)
        if conn is None:
            return
        frame = ENCODER.encode(message)
        if conn.log is not None:
            conn.log.write(OUT, frame)
        if not conn.put(frame):
            conn.closing = True
            conn.send.close()  # the writer notices and closes 1013

    # ---- the endpoint -----------------------------------------------------------------

    async def endpoint(self, ws: WebSocket) -> None:
        await ws.accept()
        hello = await self._hello(ws)
        if hello is None:
            return
        token, msg, frame = hello
        account_id = token.account.id
        # no await from the count to the insert below: concurrent hellos cannot both fit
        cap = self.config.worker_sessions_per_account_max
        if self._per_account.get(account_id, 0) >= cap:
            await self._turn_away(ws, f"too many worker sessions for this account "
                                      f"(TN_WORKER_SESSIONS_PER_ACCOUNT_MAX={cap}); "
                                      "stop one or raise the limit")
            return
        session_id = f"s{self.epoch}.{next(self._ids)}"
        conn = _Conn(self.config.session_queue_max, account_id, token.token_hash,
                     token.expires_ms)
        if self.logs is not None:
            conn.log = self.logs.open(session_id, f"worker-{msg.worker_id}")
            conn.log.write(IN, frame)  # the log writer redacts the token
        self.conns[session_id] = conn
        self._per_account[account_id] = self._per_account.get(account_id, 0) + 1
        said_hello = False
        try:
            # registered: a revocation from now on closes it (close_token), and one made while
            # the token was being checked is remembered
            if self.accounts.revoked_at(conn.token_hash) is not None:
                await self._refuse(ws, await self._token_refusal(msg.token))
                return
            said_hello = True
            await self._post(SessionHello(
                0, 0, session_id, account_id, msg.worker_id, list(msg.capabilities),
                msg.slots, list(msg.held_leases), msg.protocol, list(msg.sandbox), msg.prefetch,
            ))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, ws, conn, tg.cancel_scope)
                await self._reader(ws, session_id)
                tg.cancel_scope.cancel()
        finally:
            del self.conns[session_id]
            left = self._per_account.pop(account_id) - 1
            if left:
                self._per_account[account_id] = left
            if conn.log is not None:
                conn.log.close()
            if said_hello:
                with anyio.CancelScope(shield=True):
                    await self._post(SessionClosed(0, 0, session_id, "connection closed"))

    async def _post(self, event: Event) -> None:
        await self.runtime.enqueue(event)

    async def _hello(self, ws: WebSocket) -> tuple[Credential, w.Hello, bytes] | None:
        try:
            with anyio.fail_after(self.config.hello_timeout_ms / 1000):
                raw = await ws.receive()
        except TimeoutError:
            await self._refuse(ws, "no hello within the hello timeout; send hello first")
            return None
        data = raw.get("bytes")
        if raw["type"] != "websocket.receive" or data is None:
            if raw["type"] == "websocket.receive":
                await self._refuse(ws, "workers speak MessagePack in binary frames")
            return None
        try:
            msg = DECODER.decode(data)
        except DECODE_ERRORS as exc:
            await self._refuse(ws, f"malformed hello: {exc}")
            return None
        if not isinstance(msg, w.Hello):
            await self._refuse(ws, f"the first message must be hello, not {type(msg).__name__}")
            return None
        token = await self.accounts.credential(msg.token)
        if token is None:  # unknown, revoked or expired: say which
            await self._refuse(ws, await self._token_refusal(msg.token))
            return None
        if token.account.role not in ("worker", "admin"):
            await self._refuse(ws, f"a {token.account.role} token cannot take work; "
                                   "use a worker account's token")
            return None
        return token, msg, data

    async def _token_refusal(self, token: str) -> str:
        return await self.accounts.token_refusal(
            token, check="pass a worker account's token with --token or TN_TOKEN")

    async def _refuse(self, ws: WebSocket, reason: str) -> None:
        try:
            await ws.send_bytes(ENCODER.encode(w.Error(reason, fatal=True)))
            await ws.close(CLOSE_POLICY, reason[:120])
        except (WebSocketDisconnect, RuntimeError):
            pass

    async def _turn_away(self, ws: WebSocket, reason: str) -> None:
        """Close 1008 with no fatal error first: the worker may retry later (its client
        backs off), unlike a bad token, which no retry fixes."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await ws.close(CLOSE_POLICY, reason[:120])

    async def _reader(self, ws: WebSocket, session_id: str) -> None:
        conn = self.conns[session_id]
        log = conn.log
        bad = 0
        limit = self.config.ws_message_bytes_max
        rate, burst = self.config.worker_messages_per_s, self.config.worker_messages_burst
        bucket = TokenBucket(rate, burst)
        slowed = False
        while True:
            # over the rate: stop reading until the bucket refills (backpressure; the
            # frames wait in the worker's socket, none is dropped)
            while (wait_s := bucket.take()) > 0:
                if not slowed:
                    slowed = True
                    _log.warning("session %s (account %s) sends more than "
                                 "TN_WORKER_MESSAGES_PER_S=%d messages a second (bursts of "
                                 "TN_WORKER_MESSAGES_BURST=%d); reading it slower", session_id,
                                 conn.account_id, rate, burst)
                await anyio.sleep(wait_s)
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                return
            data = raw.get("bytes")
            problem: str | None = None
            event: Event | None = None
            if data is None:
                problem = "workers speak MessagePack in binary frames, not text"
            elif len(data) > limit:
                problem = f"message of {len(data)} bytes is over the {limit}-byte limit"
            else:
                try:
                    msg = DECODER.decode(data)
                    if log is not None:
                        log.write(IN, data)
                    event = _to_event(msg, session_id)
                    if event is None:
                        problem = "hello was already received; send it once per session"
                except DECODE_ERRORS as exc:
                    problem = f"malformed message: {exc}"
            if problem is not None:
                bad += 1
                fatal = bad >= self.config.bad_messages_max
                self.send(session_id, w.Error(problem, fatal=fatal))
                if fatal:
                    self.close(session_id, CLOSE_POLICY, "too many malformed messages")
                continue
            assert event is not None
            await self._post(event)

    async def _writer(self, ws: WebSocket, conn: _Conn, scope: anyio.CancelScope) -> None:
        recv = conn.recv
        try:
            while True:
                try:  # the common case needs no checkpoint: something is already queued
                    item = recv.receive_nowait()
                except anyio.WouldBlock:
                    item = await recv.receive()
                if isinstance(item, _Close):
                    await ws.close(item.code, item.reason[:120])
                    break
                await ws.send_bytes(item)
        except anyio.EndOfStream:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await ws.close(CLOSE_OVERLOADED, "worker too slow to take its messages")
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        scope.cancel()


def _to_event(msg: w.WorkerMessage, sid: str) -> Event | None:
    match msg:
        case w.Result():
            return ResultIn(0, 0, sid, msg.lease_id, bytes(msg.output), msg.digest)
        case w.Progress():
            return ProgressIn(0, 0, sid, msg.lease_id, msg.done, msg.total)
        case w.Heartbeat():
            return HeartbeatIn(0, 0, sid)
        case w.Fail():
            return FailIn(0, 0, sid, msg.lease_id, msg.error, msg.retryable)
        case w.WhyIdle():
            return WhyIdleIn(0, 0, sid)
        case w.Hello():
            return None
