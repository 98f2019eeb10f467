"""Session logs: every message of every WebSocket session, as JSON Lines, written by a helper.

The event loop keeps each logged message's frame as it went over the wire (a worker's
MessagePack, a dashboard's JSON), behind a 17-byte header, in one buffer; about once a second
``run`` hands the buffer to a helper process (``coordinator/sessionlog_writer.py``), which
decodes, redacts, formats and appends the lines on another core. So a logged message costs
the event loop one buffer append, not its formatting (measured: about 1.5 µs a message, and
the garbage collector's work on a second's worth of kept messages).

Files: ``<data-dir>/sessions/<start>-<session>-<worker-ID | live-ACCOUNT>.jsonl``; the format
is in the writer's docstring. Limits: ``session_log_buffer_bytes_max`` of frames may wait for
the helper; past it, messages are left out of the logs (never out of the sessions) and each
log affected says how many. If the helper dies, session logging stops with an error in the
coordinator's log and serving goes on. A coordinator killed outright loses the frames it had
not handed over yet (up to a second's; more only if the helper had fallen behind and its
pipe was full): what reached the pipe, the helper still writes. At shutdown the helper gets
``WAIT_EXIT_S`` to take the rest and finish, then is stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import msgspec

log = logging.getLogger("tn.sessionlogs")

# kind (B), log handle (I), time in ms (q), frame length (I); then the frame
HEAD = struct.Struct("<BIqI")
OPEN, IN, OUT, CLOSE, DROPPED = 1, 2, 3, 4, 5
WAIT_EXIT_S = 10.0  # at shutdown, the helper gets this long to write what it was handed


def record(kind: int, handle: int, at_ms: int, frame: bytes = b"") -> bytes:
    """One record as the helper reads it (``SessionLog.write`` inlines this)."""
    return HEAD.pack(kind, handle, at_ms, len(frame)) + frame


def open_meta(file: str, proto: str) -> bytes:
    """The frame of an ``OPEN`` record: the log's file name and its frames' encoding."""
    return msgspec.json.encode({"file": file, "proto": proto})


class SessionLogs:
    """The coordinator's side: buffers frames and feeds the helper (started on first use).
    ``now_ms`` is the clock every logged time comes from (the runtime's)."""

    def __init__(self, root: Path, payload_bytes_max: int, bytes_max: int,
                 buffer_bytes_max: int, now_ms: Callable[[], int], flush_s: float = 1.0
                 ) -> None:
        self.root = root
        self.payload_bytes_max = payload_bytes_max
        self.bytes_max = bytes_max
        self.buffer_bytes_max = buffer_bytes_max  # (set to -1 once stopped)
        self.now_ms = now_ms
        self.flush_s = flush_s
        self.buffer = bytearray()  # the one buffer every SessionLog appends to
        self.dropped: dict[int, int] = {}  # log handle -> messages left out, not yet noted
        self._handles = itertools.count(1)
        self._helper: anyio.abc.Process | None = None
        self._lock = anyio.Lock()
        self._closed = False

    def open(self, session_id: str, who: str, proto: str = "msgpack") -> SessionLog:
        """A new session's log; ``proto`` is how its frames are encoded (msgpack, json)."""
        now_ms = self.now_ms()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ms / 1000))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in who)[:60]
        handle = next(self._handles)
        if self.buffer_bytes_max >= 0:
            self.buffer += record(OPEN, handle, now_ms,
                                  open_meta(f"{stamp}-{session_id}-{safe}.jsonl", proto))
        return SessionLog(self, handle)

    def note_dropped(self, handle: int) -> None:
        """Say in the log how many of its messages were left out (before it closes)."""
        count = self.dropped.pop(handle, 0)
        if count and self.buffer_bytes_max >= 0:
            self.buffer += record(DROPPED, handle, self.now_ms(), b"%d" % count)

    async def run(self) -> None:
        """Hand the buffer to the helper every ``flush_s``, until cancelled."""
        while True:
            await anyio.sleep(self.flush_s)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if self.buffer_bytes_max < 0:  # stopped: nothing is kept
                self.buffer.clear()
                self.dropped.clear()
                return
            for handle in list(self.dropped):
                self.note_dropped(handle)
            if not self.buffer:
                return
            try:
                if self._helper is None:  # (a cancel here leaves the buffer as it was)
                    self._helper = await anyio.open_process(
                        [sys.executable, "-m", "coordinator.sessionlog_writer",
                         str(self.root), str(self.payload_bytes_max), str(self.bytes_max)],
                        stdout=None, stderr=None)
                assert self._helper.stdin is not None
                data = bytes(self.buffer)
                self.buffer.clear()
                # handed over once written to the pipe's transport, also if the wait for
                # the pipe to drain is cancelled
                await self._helper.stdin.send(data)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, why: str) -> None:
        code = None if self._helper is None else self._helper.returncode
        log.error("session logs stop: their writer failed (%s, exit code %s); the coordinator "
                  "keeps serving. Restart it to log sessions again, or set "
                  "TN_SESSION_LOGS_ENABLED=false", why, code)
        self.buffer_bytes_max = -1
        self.buffer.clear()

    async def aclose(self) -> None:
        """Hand over what is left and let the helper finish writing and exit, all within
        ``WAIT_EXIT_S``; past it (a helper that stopped reading), stop the helper."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(WAIT_EXIT_S):
            await self.flush()
            self.buffer_bytes_max = -1
            if self._helper is not None:
                assert self._helper.stdin is not None
                with contextlib.suppress(OSError, anyio.BrokenResourceError):
                    await self._helper.stdin.aclose()
                await self._helper.wait()
        self.buffer_bytes_max = -1
        helper, self._helper = self._helper, None
        if helper is None:
            return
        if helper.returncode is None:
            log.error("the session log writer did not finish within %.0f s; stopping it "
                      "(the logs may miss their last seconds)", WAIT_EXIT_S)
            helper.kill()
            with anyio.CancelScope(shield=True):
                await helper.wait()
        elif helper.returncode != 0:
            log.error("the session log writer exited with code %d (see its message above)",
                      helper.returncode)


class SessionLog:
    """One session's log: ``write`` is on every logged message's path, so it only appends
    the frame (bytes as sent or received; the caller decoded it already, so it is valid)."""

    __slots__ = ("_buffer", "_logs", "_now_ms", "handle")

    def __init__(self, logs: SessionLogs, handle: int) -> None:
        self._logs = logs
        self._buffer = logs.buffer
        self._now_ms = logs.now_ms
        self.handle = handle

    def write(self, kind: int, frame: bytes) -> None:
        """Log ``frame``, ``kind`` ``IN`` (received) or ``OUT`` (sent), now."""
        buffer = self._buffer
        if len(buffer) <= self._logs.buffer_bytes_max:
            buffer += HEAD.pack(kind, self.handle, self._now_ms(), len(frame))
            buffer += frame
        else:
            dropped = self._logs.dropped
            dropped[self.handle] = dropped.get(self.handle, 0) + 1

    def close(self) -> None:
        logs = self._logs
        logs.note_dropped(self.handle)
        if logs.buffer_bytes_max >= 0:
            self._buffer += record(CLOSE, self.handle, logs.now_ms())
