"""The session log writer: a helper process that turns the coordinator's frames into JSON Lines.

    python -m coordinator.sessionlog_writer ROOT PAYLOAD_BYTES_MAX BYTES_MAX  (frames on stdin)

The coordinator (``coordinator/sessionlogs.py``) starts it and writes records to its stdin:
a header (``sessionlogs.HEAD``: kind, log handle, time, length), then the frame. It exits at
the end of its input, having written everything. It ignores SIGINT, SIGTERM and SIGHUP (a
Ctrl-C, or a service manager stopping the whole group, reaches it too), so that it outlives
the coordinator's shutdown or death and writes what it was handed. It runs as background work
(see ``background``).

One file per session, one line per message, in order::

    {"t": 12, "dir": "in", "msg": {"type": "result", "lease_id": 4294967297, ...}}

``t`` is milliseconds since the session began, ``dir`` is ``in`` (received) or ``out`` (sent)
and ``msg`` is the message as JSON. Fields named like a token, password or secret read
``"<redacted>"``. A worker session's bulk payloads (a chunk's items, a result's output) read
``{"bytes": N, "b64": "..."}`` up to PAYLOAD_BYTES_MAX, so the session can be re-driven
(``coordinator/redrive.py``), and ``{"bytes": N, "sha256": "<32 hex>", "b64": null}`` beyond;
a dashboard frame beyond PAYLOAD_BYTES_MAX reads ``{"type": T, "bytes": N, "sha256": ...}``.
Lines with ``"dir": "note"`` say what the log itself missed (``dropped``: messages left out
while the writer was behind). The directory is kept under BYTES_MAX, oldest files first.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import os
import select
import signal
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import msgspec

from coordinator.parsing import DECODE_ERRORS
from coordinator.sessionlogs import CLOSE, DROPPED, HEAD, IN, OPEN, OUT
from schema import worker as w

READ_BYTES = 1 << 20
WRITE_EVERY_S = 0.5  # formatted lines reach their files at least this often ...
WRITE_BYTES = 1 << 20  # ... or once this many wait
NICE = 19  # on a busy machine the writer runs in the gaps (its input waits in the pipe)
TRIM_EVERY_S = 10.0
_JSON = msgspec.json.Encoder()
_DECODE_IN = msgspec.msgpack.Decoder(w.WorkerMessage)
_DECODE_OUT = msgspec.msgpack.Decoder(w.CoordinatorMessage)
_DIRECTIONS = {IN: b'"in"', OUT: b'"out"'}
_PAYLOADS = (msgspec.Raw, bytes, bytearray)
_SECRET_WORDS = ("token", "password", "secret")
_BYTES_INFO = (msgspec.inspect.BytesType, msgspec.inspect.ByteArrayType,
               msgspec.inspect.MemoryViewType, msgspec.inspect.RawType)
_LOGGED: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


class _Log:
    __slots__ = ("lines", "path", "proto", "t0")

    def __init__(self, path: Path, proto: str, t0: int) -> None:
        self.path = path
        self.proto = proto
        self.t0 = t0
        self.lines = bytearray()  # formatted, not yet appended


class Writer:
    """Parses records, formats their lines, appends them to the session files."""

    def __init__(self, root: Path, payload_bytes_max: int, bytes_max: int) -> None:
        self.root = root
        self.payload_bytes_max = payload_bytes_max
        self.bytes_max = bytes_max
        self.logs: dict[int, _Log] = {}
        self.unwritten = 0  # bytes of lines formatted, not yet appended to their files
        self._trimmed = time.monotonic()
        self._failed: set[str] = set()  # errors reported (each once)
        root.mkdir(parents=True, exist_ok=True)

    def feed(self, data: bytearray) -> int:
        """Handle the whole records at the start of ``data``; returns the bytes used."""
        at, end, size = 0, len(data), HEAD.size
        with memoryview(data) as view:
            while end - at >= size:
                kind, handle, t, n = HEAD.unpack_from(data, at)
                if end - at - size < n:
                    break
                self._record(kind, handle, t, bytes(view[at + size:at + size + n]))
                at += size + n
        return at

    def _record(self, kind: int, handle: int, t: int, frame: bytes) -> None:
        if kind == OPEN:
            meta = msgspec.json.decode(frame)
            opened = self.logs[handle] = _Log(self.root / Path(meta["file"]).name,
                                              meta["proto"], t)
            self._append(opened)  # the file exists from the session's start
            return
        log = self.logs.get(handle)
        if log is None:
            return
        if kind in _DIRECTIONS:
            line = self._line(log, kind, t - log.t0, frame)
        elif kind == DROPPED:
            line = b'{"t":%d,"dir":"note","dropped":%d,"why":"the log writer fell behind ' \
                   b'(TN_SESSION_LOG_BUFFER_BYTES_MAX)"}\n' % (t - log.t0, int(frame))
        else:
            line = b""
        log.lines += line
        self.unwritten += len(line)
        if kind == CLOSE:
            self._append(log)
            del self.logs[handle]

    def _line(self, log: _Log, kind: int, t: int, frame: bytes) -> bytes:
        try:
            msg = (self._worker_msg(kind, frame) if log.proto == "msgpack"
                   else self._live_msg(kind, frame))
        except DECODE_ERRORS as exc:
            return b'{"t":%d,"dir":"note","unreadable":%b,"bytes":%d}\n' % (
                t, _JSON.encode(f"{'in' if kind == IN else 'out'}: {exc}"), len(frame))
        return b'{"t":%d,"dir":%b,"msg":%b}\n' % (t, _DIRECTIONS[kind], msg)

    def _worker_msg(self, kind: int, frame: bytes) -> bytes:
        message: msgspec.Struct = (_DECODE_IN if kind == IN else _DECODE_OUT).decode(frame)
        secret, payloads = _log_fields(type(message))
        if secret or payloads:  # replace() does not check types: fine for a log's copy
            changes: dict[str, Any] = dict.fromkeys(secret, "<redacted>")
            for key in payloads:
                value = getattr(message, key)
                if isinstance(value, _PAYLOADS):  # written as JSON the encoder copies as is
                    changes[key] = msgspec.Raw(self._payload(value))
            message = msgspec.structs.replace(message, **changes)
        return _JSON.encode(message)

    def _payload(self, value: Any) -> bytes:
        n = len(value)
        if n <= self.payload_bytes_max:
            return b'{"bytes":%d,"b64":"%b"}' % (n, binascii.b2a_base64(value, newline=False))
        return b'{"bytes":%d,"sha256":"%b","b64":null}' % (
            n, hashlib.sha256(value).hexdigest()[:32].encode())

    def _live_msg(self, kind: int, frame: bytes) -> bytes:
        if kind == OUT and len(frame) > self.payload_bytes_max:
            head = msgspec.json.decode(frame, type=_Typed)
            return b'{"type":%b,"bytes":%d,"sha256":"%b"}' % (
                _JSON.encode(head.type), len(frame),
                hashlib.sha256(frame).hexdigest()[:32].encode())
        value = msgspec.json.decode(frame)
        if isinstance(value, dict):  # a client's message: one line, secrets out
            value = {k: "<redacted>" if _secret(k) else v for k, v in value.items()}
        return _JSON.encode(value)

    def write_out(self) -> None:
        """Append the lines formatted so far; trim the directory now and then."""
        for log in self.logs.values():
            if log.lines:
                self._append(log)
        if time.monotonic() - self._trimmed >= TRIM_EVERY_S:
            self._trimmed = time.monotonic()
            trim_session_logs(self.root, self.bytes_max,
                              keep={log.path.name for log in self.logs.values()})

    def _append(self, log: _Log) -> None:
        """Append ``log``'s lines to its file (creating it); a failure (disk full, the
        directory gone) loses these lines, says so once per kind of error, and goes on."""
        try:
            with open(log.path, "ab") as f:
                f.write(log.lines)
        except OSError as exc:
            why = f"{type(exc).__name__} {exc.errno}"
            if why not in self._failed:
                self._failed.add(why)
                print(f"session log writer: cannot write {log.path} ({exc}); its lines are "
                      "lost, and so will be those of any log that fails alike: free disk "
                      "space or fix the directory's permissions", file=sys.stderr)
        self.unwritten -= len(log.lines)
        log.lines.clear()


class _Typed(msgspec.Struct):
    type: str = "?"


def _secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def _log_fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A message type's secret fields (never logged) and bulk payload fields (bytes or Raw:
    logged as size, digest and, when small, base64); looked up once per type."""
    found = _LOGGED.get(cls)
    if found is None:
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType), cls
        secret = tuple(f.name for f in info.fields if _secret(f.name))
        payloads = tuple(f.name for f in info.fields if _is_bytes(f.type))
        found = _LOGGED[cls] = (secret, payloads)
    return found


def _is_bytes(t: msgspec.inspect.Type) -> bool:
    kinds = t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)
    return any(isinstance(k, _BYTES_INFO) for k in kinds)


def trim_session_logs(root: Path, bytes_max: int, keep: Collection[str] = ()) -> None:
    """Delete the oldest session logs while the directory is over ``bytes_max`` (the logs
    of sessions still open, ``keep``, go last)."""
    if not root.is_dir():
        return
    logs = []
    for p in root.glob("*.jsonl"):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        logs.append((p.name in keep, st.st_mtime, st.st_size, p))
    logs.sort(key=lambda x: (x[0], x[1]))
    total = sum(x[2] for x in logs)
    for _, _, size, path in logs:
        if total <= bytes_max:
            break
        total -= size
        path.unlink(missing_ok=True)


def background() -> None:
    """Run in the gaps the coordinator and workers leave: at nice 19 and, on Linux, in the
    SCHED_IDLE class, whose tasks the scheduler preempts as soon as any other task wakes
    (a nice 19 task is only weighed lower). While the machine is busy, the input waits in
    the pipe and in the coordinator's buffer."""
    os.nice(NICE)
    with contextlib.suppress(AttributeError, OSError):  # not on Linux: nice alone
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the coordinator ends us
        signal.signal(sig, signal.SIG_IGN)  # (end of input), also when its group is stopped
    background()
    writer = Writer(Path(args[0]), int(args[1]), int(args[2]))
    pending = bytearray()
    stdin = sys.stdin.fileno()
    written = time.monotonic()
    while True:
        # wait for input, but no longer than the lines formatted so far may wait
        wait_s = max(0.0, written + WRITE_EVERY_S - time.monotonic()) if writer.unwritten \
            else None
        if select.select([stdin], [], [], wait_s)[0]:
            chunk = os.read(stdin, READ_BYTES)
            if not chunk:
                break
            pending += chunk
            del pending[:writer.feed(pending)]
        if writer.unwritten >= WRITE_BYTES or (
                writer.unwritten and time.monotonic() - written >= WRITE_EVERY_S):
            writer.write_out()
            written = time.monotonic()
    writer.write_out()
    if pending:
        print(f"session log writer: the input ended inside a record ({len(pending)} bytes "
              "left); the coordinator stopped mid-write", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
