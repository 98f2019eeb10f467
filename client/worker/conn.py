"""One worker: a persistent WebSocket session to the coordinator and a runner per slot.

Jobs outlive connections: slots keep computing while the session reconnects, and a
finished result is kept until the coordinator acknowledges it (``accepted``/``rejected``),
so it can be re-sent after a reconnect. The hello lists every lease still held.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskGroup
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from client.worker.runner import ChunkFailed, RunnerLimits, SlotRunner
from coordinator.uploads import UploadError, UploadLimits, extract_code_zip
from schema import worker as w

log = logging.getLogger("tn.worker")
ENCODER = msgspec.msgpack.Encoder()
IDLE_ASK_S = 10.0  # idle this long (no chunk held) before asking the coordinator why
BACKOFF_FIRST_S = 0.25  # the first reconnect's delay; doubled per failure up to backoff_max_s
POLICY_BACKOFF_S = 5.0  # after a policy close (1008: e.g. too many sessions), at least this
CLOSE_POLICY = 1008
DECODER = msgspec.msgpack.Decoder(w.CoordinatorMessage)


class FatalError(Exception):
    """The coordinator refused this worker for a reason a retry cannot fix."""


@dataclass(frozen=True)
class WorkerOptions:
    url: str
    token: str
    worker_id: str
    slots: int = 1
    prefetch: int = 1  # chunks queued beyond the running ones (no idle gap between chunks)
    capabilities: tuple[str, ...] = ()
    cache_dir: Path = Path.home() / ".cache" / "tn-worker"
    heartbeat_ms: int | None = None  # default: what the coordinator asks for in welcome
    backoff_max_s: float = 10.0
    message_bytes_max: int = 64 << 20
    limits: RunnerLimits = field(default_factory=RunnerLimits)


@dataclass
class Job:
    assign: w.Assign
    reply: w.Result | w.Fail | None = None  # kept until acknowledged
    scope: anyio.CancelScope | None = None
    last_progress: float = 0.0


class Worker:
    def __init__(self, opts: WorkerOptions, on_event: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.on_event = on_event or (lambda line: log.info("%s", line))
        self.jobs: dict[int, Job] = {}
        self.ws: ClientConnection | None = None
        self.heartbeat_s = 2.0
        self.completed = 0
        self._queue_send, self._queue_recv = anyio.create_memory_object_stream[int](10_000)
        self._code_locks: dict[str, anyio.Lock] = {}
        self._code_dirs: dict[str, Path] = {}
        self._progress_send, self._progress_recv = anyio.create_memory_object_stream[w.Progress](
            256
        )
        self.runners = [SlotRunner(opts.limits) for _ in range(opts.slots)]
        self.layers: list[str] = []
        self.last_idle_reasons: list[str] = []
        self._delay_s = BACKOFF_FIRST_S  # back to the first delay once welcomed

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        for runner in self.runners:
            await runner.start()
        self.layers = self.runners[0].layers
        self.on_event(f"sandbox layers: {', '.join(self.layers) or 'none'}")
        try:
            async with anyio.create_task_group() as tg:
                for runner in self.runners:
                    tg.start_soon(self._slot, runner)
                await self._connect_forever(tg)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for runner in self.runners:
                    await runner.close()

    async def _connect_forever(self, tg: TaskGroup) -> None:
        """Connect, run the session, and reconnect with exponential backoff. The delay
        goes back to the first only after a welcome: a coordinator that accepts the socket
        and then closes it (too many sessions) is not retried in a hot loop."""
        url = self.opts.url.rstrip("/") + "/ws/worker"
        while True:
            pause_s: float | None = None  # set when the session ended with an error
            try:
                async with connect(
                    url, max_size=self.opts.message_bytes_max, open_timeout=10, compression=None
                ) as ws:
                    await self._session(ws)
            except FatalError:
                raise
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                pause_s = self._lost(exc)
            except BaseExceptionGroup as group:  # from the session's task group
                fatal, _ = group.split(FatalError)
                if fatal is not None:
                    raise fatal.exceptions[0] from None
                lost, other = group.split((OSError, ConnectionClosed, TimeoutError))
                if other is not None or lost is None:
                    raise
                pause_s = self._lost(lost.exceptions[0])
            except InvalidURI as exc:
                raise FatalError(f"bad --url {self.opts.url!r}: {exc}") from None
            finally:
                self.ws = None
            await anyio.sleep(self._pause_s() if pause_s is None else pause_s)
            self._delay_s = min(self._delay_s * 2, self.opts.backoff_max_s)

    def _pause_s(self) -> float:
        return self._delay_s * (0.5 + random.random())

    def _lost(self, exc: BaseException) -> float:
        """Say why the session ended; return how long to wait before reconnecting. A policy
        close (1008) carries the coordinator's reason, e.g. a limit and its setting: it is
        printed as such, and the wait is at least ``POLICY_BACKOFF_S``."""
        closed = exc.rcvd if isinstance(exc, ConnectionClosed) else None
        if closed is not None and closed.code == CLOSE_POLICY:
            floor_s = min(POLICY_BACKOFF_S, self.opts.backoff_max_s)
            self._delay_s = max(self._delay_s, floor_s)
            pause_s = max(self._pause_s(), floor_s)
            self.on_event(f"the coordinator closed the session: {closed.reason or 'policy'} "
                          f"(code 1008); retrying in {pause_s:.1f}s")
            return pause_s
        pause_s = self._pause_s()
        self.on_event(
            f"connection lost ({exc.__class__.__name__}: {exc}); reconnecting in {pause_s:.1f}s"
        )
        return pause_s

    async def _session(self, ws: ClientConnection) -> None:
        held = list(self.jobs)
        await ws.send(
            ENCODER.encode(
                w.Hello(
                    self.opts.worker_id,
                    self.opts.token,
                    capabilities=list(self.opts.capabilities),
                    slots=self.opts.slots,
                    prefetch=self.opts.prefetch,
                    held_leases=held,
                    sandbox=self.layers,
                )
            )
        )
        first = DECODER.decode(await ws.recv(decode=False))
        if isinstance(first, w.Error):
            raise FatalError(first.reason)
        if not isinstance(first, w.Welcome):
            raise FatalError(f"expected welcome, got {type(first).__name__}")
        self.heartbeat_s = (self.opts.heartbeat_ms or first.heartbeat_ms) / 1000
        self._delay_s = BACKOFF_FIRST_S
        for lease_id in first.dropped:
            self._forget(lease_id, "dropped by the coordinator")
        self.ws = ws
        self.on_event(
            f"connected as {first.session}; resumed {len(first.resumed)} "
            f"lease(s), dropped {len(first.dropped)}"
        )
        for job in list(self.jobs.values()):
            if job.reply is not None:
                await self._send(job.reply)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat, ws)
            tg.start_soon(self._progress_pump)
            async for frame in ws:
                if isinstance(frame, str):
                    continue
                await self._on_message(DECODER.decode(frame))
            tg.cancel_scope.cancel()

    async def _heartbeat(self, ws: ClientConnection) -> None:
        idle_since: float | None = None
        asked = 0.0
        while True:
            await anyio.sleep(self.heartbeat_s)
            await ws.send(ENCODER.encode(w.Heartbeat(list(self.jobs))))
            now = time.monotonic()
            idle_since = (idle_since or now) if not self.jobs else None
            # idle a while: ask the coordinator why (shown in the log), at most every 30 s
            if idle_since is not None and now - idle_since >= IDLE_ASK_S and now - asked >= 30:
                asked = now
                await ws.send(ENCODER.encode(w.WhyIdle()))

    async def _progress_pump(self) -> None:
        async for msg in self._progress_recv:
            if msg.lease_id in self.jobs:
                await self._send(msg)

    async def _send(self, msg: w.WorkerMessage) -> None:
        ws = self.ws
        if ws is None:
            return  # kept in its job; re-sent after the reconnect
        with contextlib.suppress(ConnectionClosed):
            await ws.send(ENCODER.encode(msg))

    # ---- messages from the coordinator ------------------------------------------------

    async def _on_message(self, msg: w.CoordinatorMessage) -> None:
        match msg:
            case w.Assign():
                self.jobs[msg.lease_id] = Job(msg)
                await self._queue_send.send(msg.lease_id)
            case w.Accepted():
                if self.jobs.pop(msg.lease_id, None) is not None:
                    self.completed += 1
            case w.Rejected():
                self._forget(msg.lease_id, f"result rejected: {msg.reason}")
            case w.Revoke():
                self._forget(msg.lease_id, f"revoked: {msg.reason}")
            case w.Error():
                self.on_event(f"coordinator says: {msg.reason}")
                if msg.fatal:
                    raise FatalError(msg.reason)
            case w.Idle():
                self.last_idle_reasons = list(msg.reasons)
                self.on_event("idle: " + "; ".join(msg.reasons))
            case w.Welcome():
                self.on_event("unexpected second welcome; ignored")

    def _forget(self, lease_id: int, why: str) -> None:
        job = self.jobs.pop(lease_id, None)
        if job is not None:
            if job.scope is not None:
                job.scope.cancel()
            self.on_event(f"lease {lease_id}: {why}")

    # ---- running chunks ---------------------------------------------------------------

    async def _slot(self, runner: SlotRunner) -> None:
        async for lease_id in self._queue_recv:
            job = self.jobs.get(lease_id)
            if job is None or job.reply is not None:
                continue
            reply: w.Result | w.Fail | None = None
            with anyio.CancelScope() as scope:
                job.scope = scope
                reply = await self._run(runner, job)
            job.scope = None
            if reply is not None and lease_id in self.jobs:  # None: revoked or dropped
                job.reply = reply
                await self._send(reply)

    async def _run(self, runner: SlotRunner, job: Job) -> w.Result | w.Fail:
        a = job.assign
        job.last_progress = time.monotonic()  # the first progress report comes 0.5 s in
        try:
            code_dir = await self._code(a.task_id, a.code_ref)
            deadline_s = a.deadline_ms / 1000 if a.deadline_ms else 300.0

            def progress(done: int, total: int) -> None:
                now = time.monotonic()
                if now - job.last_progress >= 0.5 and self.ws is not None:
                    job.last_progress = now
                    with contextlib.suppress(anyio.WouldBlock):  # progress is best effort
                        self._progress_send.send_nowait(w.Progress(a.lease_id, done, total))

            out = await runner.run(code_dir, a.code_ref, bytes(a.items), deadline_s, progress)
            return w.Result(a.lease_id, msgspec.Raw(out), hashlib.sha256(out).hexdigest())
        except ChunkFailed as exc:
            return w.Fail(a.lease_id, exc.reason, exc.retryable)
        except CodeFetchError as exc:
            return w.Fail(a.lease_id, str(exc), True)

    async def _code(self, task_id: str, code_ref: str) -> Path:
        dest = self._code_dirs.get(code_ref)
        if dest is not None:
            return dest
        dest = self.opts.cache_dir / "code" / code_ref
        lock = self._code_locks.setdefault(code_ref, anyio.Lock())
        async with lock:
            if not (dest / "main.py").is_file():
                await anyio.to_thread.run_sync(self._fetch_code, task_id, dest)
        self._code_dirs[code_ref] = dest
        return dest

    def _fetch_code(self, task_id: str, dest: Path) -> None:
        base = self.opts.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        req = urllib.request.Request(
            f"{base.rstrip('/')}/api/tasks/{task_id}/code",
            headers={"Authorization": f"Bearer {self.opts.token}"},
        )
        for attempt in range(1, CODE_FETCH_TRIES + 1):
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    data = resp.read(UploadLimits().code_bytes_max + 1)
                break
            except urllib.error.HTTPError as exc:
                # over the coordinator's rate limit (429) or busy (503): wait as told and
                # try again, rather than fail the chunk (a failure counts an attempt)
                if exc.code not in (429, 503) or attempt == CODE_FETCH_TRIES:
                    raise CodeFetchError(f"could not download the task's code: {exc}") from None
                wait = exc.headers.get("Retry-After", "1")
                time.sleep(min(CODE_FETCH_WAIT_MAX_S, float(wait) if wait.isdigit() else 1.0))
            except (urllib.error.URLError, OSError) as exc:
                raise CodeFetchError(f"could not download the task's code: {exc}") from None
        tmp = dest.with_name(dest.name + f".tmp{random.randrange(1 << 30)}")
        try:
            extract_code_zip(data, tmp, UploadLimits())
            tmp.rename(dest)
        except UploadError as exc:
            raise CodeFetchError(f"the task's code archive is unusable: {exc.message}") from None
        except OSError:
            if not (dest / "main.py").is_file():
                raise


CODE_FETCH_TRIES = 5  # a task's code is fetched at most this often while refused with 429
CODE_FETCH_WAIT_MAX_S = 10.0  # the longest wait a Retry-After may ask for between tries


class CodeFetchError(Exception):
    pass
