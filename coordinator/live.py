"""The live socket (``/ws/live``): snapshots, then coalesced updates, per subscriber.

The core marks tasks changed; every ``live_flush_ms`` the hub encodes each changed task
once and offers the frame to its subscribers' bounded queues. A subscriber whose queue is
full is dropped (close 1013) and must reconnect for a fresh snapshot: a slow dashboard
never slows the coordinator.

The dashboard's views (built in ``live_views.py``): ``grid:<id>`` (a task's page: active
assignments, burn-down history, and its chunk states as changed blocks), ``workers`` (the
caller's own sessions), ``wallet`` (the caller's balances) and ``platform`` (admins). Each is
built once per flush however many watch it, and sent only when it changed. All subscribers
together get at most ``LIVE_FRAMES_PER_S_MAX`` task updates a second (see ``Hub._due``), so
the cost of open dashboards to the coordinator is bounded, not proportional to their number.

Limits (coordinator/limits.py): an account may hold ``live_sessions_per_account_max`` live
sessions at once, and each may send ``live_messages_per_s`` messages (a dashboard sends one
per change of view); past either, an error frame says which limit, then a 1008 close. A
session opened with a bearer token is closed the same way when that token is revoked
(``LiveEndpoint.close_token``), and so is one a browser opened after signing in with it; and
when its credential expires (the token's expiry, or the browser sign-in's, which never outlasts
its token): ``close_expired``, swept by the app about once a second. A subscriber is registered
before its credential is looked at again, so a revocation made while the socket was being
opened cannot be missed.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, deque

import anyio
import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from coordinator import live_views as views
from coordinator.accounts import Account, Accounts, revoked_reason
from coordinator.config import Config
from coordinator.core.core import Core
from coordinator.core.lifecycle import TERMINAL_TASK_STATES
from coordinator.core.state import Session, Task
from coordinator.http_auth import SocketCaller, socket_account
from coordinator.limits import TokenBucket
from coordinator.parsing import DECODE_ERRORS
from coordinator.sessionlogs import IN, OUT, SessionLog, SessionLogs
from coordinator.views import task_info
from schema import live as lv

ENCODER = msgspec.json.Encoder()
PLATFORM_EVERY_MS = 1000  # the platform view (and its chunks/s point) once a second
LIVE_FRAMES_PER_S_MAX = 400  # task updates to all subscribers together, per second
LIVE_COALESCE_MS_MAX = 3000  # ... but every view is updated at least this often
TASKS_SNAPSHOT_MAX = 200  # tasks in a "tasks" snapshot: running ones, then the latest
DECODER = msgspec.json.Decoder(lv.LiveClientMessage)
CLOSE_POLICY = 1008
CLOSE_WAIT_S = 5.0  # a closing session's writer gets this long to send its last frames
TOKEN_REVOKED = "token revoked; get a new token (tn token create)"


class _Sub:
    """One subscriber: its account, its topics and a bounded queue of frames for its writer.
    A full queue marks it too slow: its writer then ends the socket (close 1013). ``end``
    queues a last error frame and has the writer close after it."""

    def __init__(self, account: Account, queue_max: int, caller: SocketCaller | None = None
                 ) -> None:
        self.account = account
        self.caller = caller  # what it authenticated with (its token, expiry)
        self.queue: deque[bytes] = deque()
        self.queue_max = queue_max
        self.wake = anyio.Event()
        self.dropped = False
        self.ending: tuple[int, str] | None = None  # close code and reason, after the queue
        self.topics: set[str] = set()
        self.log: SessionLog | None = None

    def push(self, frame: bytes, snapshot: bool = False) -> None:
        """Queue a frame; a snapshot's frames (bounded by their builders) always fit."""
        if self.dropped or self.ending is not None:
            return
        if len(self.queue) >= self.queue_max and not snapshot:
            self.dropped = True
            self.queue.clear()
        else:
            self.queue.append(frame)
        self.wake.set()

    def end(self, reason: str, code: int = CLOSE_POLICY) -> None:
        """Send an error frame with ``reason``, then close with ``code`` (the close reason
        is cut to fit a close frame; the error frame has all of it)."""
        if self.dropped or self.ending is not None:
            return
        self.push(ENCODER.encode(lv.LiveError(reason)), snapshot=True)
        self.ending = (code, reason[:120])
        self.wake.set()


class Hub:
    """Topics and their subscribers. Keys: ``task:<id>``, ``grid:<id>``, ``tasks:<owner>``
    (``tasks:*`` for admins), ``workers:<account>``, ``wallet:<account>``, ``platform``.
    Each view is built once per flush, whatever the number of its subscribers."""

    def __init__(self, core: Core, config: Config) -> None:
        self.core = core
        self.config = config
        self.topics: dict[str, set[_Sub]] = {}
        self.dirty: set[str] = set()
        # the dashboard's views (coordinator/live_views.py)
        self.grids: dict[str, views.ChunkGrid] = {}  # tasks someone watches: states sent
        self.history: dict[str, views.History] = {}  # tasks' burn-down points
        self._finished: OrderedDict[str, None] = OrderedDict()  # finished, with a history
        self.escrows = views.EscrowIndex(core)
        self.platform = views.Platform(core)
        self._sent: dict[str, bytes] = {}  # workers / wallet view last sent, by topic key
        self._platform_at = 0
        self._tokens = float(LIVE_FRAMES_PER_S_MAX)  # the frame budget (see _due)
        self._refilled = self._flushed = time.monotonic()

    def mark(self, task_id: str) -> None:
        self.dirty.add(task_id)

    def frame(self, task_id: str) -> bytes | None:
        task = self.core.tasks.get(task_id)
        return None if task is None else ENCODER.encode(lv.TaskUpdate(task_info(self.core, task)))

    async def flusher(self) -> None:
        while True:
            await anyio.sleep(self.config.live_flush_ms / 1000)
            self.flush()

    def _due(self) -> bool:
        """May this flush go out? Frames cost the coordinator per subscriber, so all live
        views together get at most ``LIVE_FRAMES_PER_S_MAX`` frames a second: with many
        subscribers, updates are coalesced over longer periods (but never longer than
        ``LIVE_COALESCE_MS_MAX``), so a thousand dashboards cost about what forty do."""
        now = time.monotonic()
        self._tokens = min(float(LIVE_FRAMES_PER_S_MAX),
                           self._tokens + (now - self._refilled) * LIVE_FRAMES_PER_S_MAX)
        self._refilled = now
        cost = 0
        for task_id in self.dirty:
            task = self.core.tasks.get(task_id)
            if task is not None:
                cost += (len(self.topics.get(f"task:{task_id}", ()))
                         + len(self.topics.get(f"tasks:{task.owner}", ()))
                         + len(self.topics.get("tasks:*", ()))
                         + 2 * len(self.topics.get(f"grid:{task_id}", ())))
        if cost > self._tokens and now - self._flushed < LIVE_COALESCE_MS_MAX / 1000:
            return False
        self._tokens -= cost
        self._flushed = now
        return True

    def flush(self) -> None:
        if not self._due():
            return
        dirty, self.dirty = self.dirty, set()
        for task_id in dirty:
            task = self.core.tasks.get(task_id)
            if task is None:
                continue
            self._task_views(task)
            subs = (
                self.topics.get(f"task:{task_id}", set())
                | self.topics.get(f"tasks:{task.owner}", set())
                | self.topics.get("tasks:*", set())
            )
            if subs:
                frame = ENCODER.encode(lv.TaskUpdate(task_info(self.core, task)))
                for sub in subs:
                    sub.push(frame)
            watchers = self.topics.get(f"grid:{task_id}")
            if watchers:
                self._task_page(task, watchers)
        self._account_views()
        if self.core.now - self._platform_at >= PLATFORM_EVERY_MS:
            self._platform_at = self.core.now
            self.platform.sample(self.core.now)
            admins = self.topics.get("platform")
            if admins:
                _push_all(admins, ENCODER.encode(self.platform.view()))

    # ---- the dashboard's views ----------------------------------------------------------

    def _task_views(self, task: Task) -> None:
        """Bookkeeping of every changed task, watched or not (a few numbers each)."""
        self.escrows.update(task)
        self.platform.task_changed(task)
        history = self.history.get(task.id)
        if history is None:
            history = self.history[task.id] = views.History()
        history.add(self.core.now, task.done, task.spent)
        if task.state in TERMINAL_TASK_STATES and task.id not in self._finished:
            self._finished[task.id] = None  # a finished task's history is kept a while
            if len(self._finished) > views.HISTORY_FINISHED_MAX:
                gone, _ = self._finished.popitem(last=False)
                self.history.pop(gone, None)

    def _task_page(self, task: Task, watchers: set[_Sub]) -> None:
        detail = views.task_detail(self.core, task, None, with_history=False)
        _push_all(watchers, ENCODER.encode(detail))
        grid = self.grids.get(task.id)
        if grid is not None:
            ranges = grid.diff(task.chunk_state)
            if ranges is None or ranges:
                _push_all(watchers, ENCODER.encode(lv.ChunkStates(
                    task.id, grid.seq, ranges or [], refetch=ranges is None)))

    def _account_views(self) -> None:
        """Workers and wallet views of the accounts that watch them, sent when changed."""
        by_account: dict[str, list[Session]] | None = None
        for key, subs in self.topics.items():
            kind, _, account_id = key.partition(":")
            if not subs or kind not in ("workers", "wallet"):
                continue
            view: lv.WorkersView | lv.WalletView
            if kind == "workers":
                if by_account is None:
                    by_account = {}
                    for s in self.core.sessions.values():
                        by_account.setdefault(s.account_id, []).append(s)
                view = views.workers_view(self.core, by_account.get(account_id, []))
            else:
                view = views.wallet_view(self.core, account_id, self.escrows)
            body = ENCODER.encode(msgspec.structs.replace(view, now_ms=0))  # time alone: same
            if self._sent.get(key) != body:
                self._sent[key] = body
                _push_all(subs, ENCODER.encode(view))

    def chunk_seq(self, task_id: str) -> int:
        """The last chunk-states update sent for a task (0 before any)."""
        grid = self.grids.get(task_id)
        return 0 if grid is None else grid.seq

    def _snapshot(self, key: str, account: Account) -> list[bytes]:
        core = self.core
        kind, _, rest = key.partition(":")
        if kind == "tasks":  # the live tasks and the latest finished ones, newest first
            tasks = [t for t in core.tasks.values() if rest == "*" or t.owner == rest]
            shown = heapq.nsmallest(TASKS_SNAPSHOT_MAX, tasks, key=lambda t: (
                t.state in TERMINAL_TASK_STATES, -t.created_ms))
            return [f for t in shown if (f := self.frame(t.id))]
        if kind == "task":
            frame = self.frame(rest)
            return [frame] if frame else []
        if kind == "grid":
            task = core.tasks[rest]
            grid = self.grids.setdefault(task.id, views.ChunkGrid(task.chunk_state))
            return [ENCODER.encode(views.task_detail(core, task, self.history.get(task.id),
                                                     with_history=True)),
                    ENCODER.encode(lv.ChunkStates(task.id, grid.seq, refetch=True))]
        if kind == "workers":
            mine = [s for s in core.sessions.values() if s.account_id == account.id]
            return [ENCODER.encode(views.workers_view(core, mine))]
        if kind == "wallet":
            return [ENCODER.encode(views.wallet_view(core, account.id, self.escrows))]
        if kind == "platform":
            return [ENCODER.encode(self.platform.view())]
        raise AssertionError(f"no snapshot for {key}")

    # ---- subscriptions ------------------------------------------------------------------

    def may_see(self, account: Account, task_id: str) -> bool:
        task = self.core.tasks.get(task_id)
        return task is not None and (account.role == "admin" or task.owner == account.id)

    def key_of(self, account: Account, topic: str) -> str | None:
        """The topic's key for this account, or None if it may not watch it."""
        admin = account.role == "admin"
        if topic == "tasks":
            return "tasks:*" if admin else f"tasks:{account.id}"
        if topic.startswith(("task:", "grid:")):
            return topic if self.may_see(account, topic[5:]) else None
        if topic in ("workers", "wallet"):
            return f"{topic}:{account.id}"
        if topic == "platform":
            return topic if admin else None
        return None

    def subscribe(self, sub: _Sub, topic: str) -> str | None:
        """Subscribe, queue the snapshot, and return None; or return why not."""
        key = self.key_of(sub.account, topic)
        if key is None:
            return ("only admins may watch the platform" if topic == "platform"
                    else "no such topic, or not yours to watch")
        if key in sub.topics:
            return None
        self.topics.setdefault(key, set()).add(sub)
        sub.topics.add(key)
        for frame in self._snapshot(key, sub.account):
            sub.push(frame, snapshot=True)
        return None

    def unsubscribe(self, sub: _Sub, topics: list[str] | None = None) -> None:
        keys = None if topics is None else {self.key_of(sub.account, t) for t in topics}
        for key in list(sub.topics):
            if keys is None or key in keys:
                subs = self.topics.get(key, set())
                subs.discard(sub)
                sub.topics.discard(key)
                if not subs:
                    self.topics.pop(key, None)
                    self._sent.pop(key, None)
                    if key.startswith("grid:"):
                        self.grids.pop(key[5:], None)


def _push_all(subs: set[_Sub], frame: bytes) -> None:
    for sub in subs:
        sub.push(frame)


async def _turn_away(ws: WebSocket, reason: str) -> None:
    """An accepted socket refused at once: the error frame, then a 1008 close."""
    try:
        await ws.send_text(ENCODER.encode(lv.LiveError(reason)).decode())
        await ws.close(CLOSE_POLICY, reason[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


class LiveEndpoint:
    def __init__(self, hub: Hub, accounts: Accounts, config: Config,
                 logs: SessionLogs | None = None, epoch: int = 0) -> None:
        self.hub = hub
        self.accounts = accounts
        self.config = config
        self.logs = logs  # each live session is logged as l<epoch>.<n>-live-<account name>
        self.epoch = epoch
        self._ids = itertools.count(1)
        self.subs: set[_Sub] = set()
        self._per_account: dict[str, int] = {}  # open live sessions by account

    def close_token(self, token_hash: str) -> int:
        """End (1008) every live session opened with this token (as a bearer token, or by a
        browser signed in with it): it was revoked. Returns how many there were."""
        doomed = [sub for sub in self.subs
                  if sub.caller is not None and sub.caller.token_hash == token_hash]
        for sub in doomed:
            sub.end(TOKEN_REVOKED)
        return len(doomed)

    def close_expired(self, now_ms: int) -> int:
        """End (1008) every live session whose credential has expired by ``now_ms``."""
        doomed = [(sub, sub.caller) for sub in self.subs
                  if sub.caller is not None and sub.caller.expires_ms is not None
                  and sub.caller.expires_ms <= now_ms and sub.ending is None]
        for sub, caller in doomed:
            sub.end(caller.expired_reason())
        return len(doomed)

    async def __call__(self, ws: WebSocket) -> None:
        caller = await socket_account(ws, self.accounts)
        if caller is None:
            await ws.close(1008, "sign in: send Authorization: Bearer <token> (or sign in "
                                 "on the dashboard)")
            return
        account = caller.account
        await ws.accept()
        # no await from the count to the insert below: concurrent sockets cannot both fit
        cap = self.config.live_sessions_per_account_max
        if self._per_account.get(account.id, 0) >= cap:
            await _turn_away(ws, f"too many live sessions for this account "
                                 f"(TN_LIVE_SESSIONS_PER_ACCOUNT_MAX={cap}); close a dashboard "
                                 "or raise the limit")
            return
        sub = _Sub(account, self.config.live_queue_max, caller)
        if self.logs is not None:
            sub.log = self.logs.open(f"l{self.epoch}.{next(self._ids)}",
                                     f"live-{account.name}", proto="json")
        self.subs.add(sub)
        self._per_account[account.id] = self._per_account.get(account.id, 0) + 1
        # registered: a revocation from now on ends it (close_token), and one made since the
        # credential was checked is remembered
        revoked_ms = self.accounts.revoked_at(caller.token_hash)
        if revoked_ms is not None:
            sub.end(revoked_reason(revoked_ms))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, ws, sub, tg.cancel_scope)
                await self._reader(ws, sub)
                if sub.ending is None:
                    tg.cancel_scope.cancel()
                else:  # the writer sends the error frame, closes and ends the group
                    tg.cancel_scope.deadline = anyio.current_time() + CLOSE_WAIT_S
        finally:
            self.subs.discard(sub)
            left = self._per_account.pop(account.id) - 1
            if left:
                self._per_account[account.id] = left
            self.hub.unsubscribe(sub)
            if sub.log is not None:
                sub.log.close()

    async def _reader(self, ws: WebSocket, sub: _Sub) -> None:
        """Handle the client's messages until it leaves, or until it must be closed: too
        many messages, or ``end`` called from elsewhere (the writer then closes)."""
        rate, burst = self.config.live_messages_per_s, self.config.live_messages_burst
        bucket = TokenBucket(rate, burst)
        while sub.ending is None:
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                return
            if bucket.take() > 0:
                sub.end(f"slow down: more than TN_LIVE_MESSAGES_PER_S={rate} messages a "
                        f"second (bursts of TN_LIVE_MESSAGES_BURST={burst}); subscribe to "
                        "several topics in one message, then reconnect")
                return
            text = raw.get("text")
            try:
                if text is None or len(text) > 65536:
                    raise msgspec.ValidationError("send JSON text frames of at most 64 KiB")
                msg = DECODER.decode(text)
            except DECODE_ERRORS as exc:
                sub.push(ENCODER.encode(lv.LiveError(f"malformed message: {exc}")))
                continue
            if sub.log is not None:
                sub.log.write(IN, text.encode())
            if isinstance(msg, lv.Subscribe):
                for topic in msg.topics:
                    why = self.hub.subscribe(sub, topic)
                    if why is not None:
                        sub.push(ENCODER.encode(lv.LiveError(why, topic)))
            else:
                self.hub.unsubscribe(sub, msg.topics)

    async def _writer(self, ws: WebSocket, sub: _Sub, scope: anyio.CancelScope) -> None:
        """Send what is queued, a batch per wake-up (one task switch for many frames)."""
        send = ws.send
        try:
            while True:
                await sub.wake.wait()
                sub.wake = anyio.Event()  # before draining: a push from now on wakes us again
                if sub.dropped:
                    await ws.close(1013, "too slow to keep up; reconnect for a fresh snapshot")
                    break
                while sub.queue:
                    frame = sub.queue.popleft()
                    if sub.log is not None:
                        sub.log.write(OUT, frame)
                    await send({"type": "websocket.send", "text": frame.decode()})
                if sub.ending is not None:
                    await ws.close(*sub.ending)
                    break
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        scope.cancel()
