"""Recording: the journal of every event that entered the core, and per-session logs.

Journal (``<data-dir>/journal/``): segments of length-prefixed MessagePack records. A segment
opens with a header carrying the core's configuration and a snapshot of its whole state,
so it replays on its own; then one record per event: the event exactly as the core saw it
(its id and time included) and a fingerprint of each effect it produced (bytes fields are
replaced by their SHA-256, so a result's output is stored once, in its event). Segments
rotate at ``journal_segment_bytes``; the oldest are deleted past ``journal_bytes_max``.

Session logs (``<data-dir>/sessions/``): one JSON Lines file per WebSocket session, named by
start time, session and worker, with every message in and out; tokens are never written and
bulk payloads (items, outputs) appear as their size and digest, with their base64 only up to
``session_log_payload_bytes_max`` (so a worker session can be re-driven: coordinator/redrive.py).

The snapshot is a pickle of the core: replay it only from recordings you trust (your own
coordinator's), as you would any pickle.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import AnyEvent, Event

JOURNAL_VERSION = 1


class Header(msgspec.Struct, frozen=True, tag="header", tag_field="kind"):
    version: int
    epoch: int
    started_ms: int
    snapshot: bytes  # pickle of the Core before the segment's first event


class Entry(msgspec.Struct, frozen=True, tag="event", tag_field="kind"):
    event: AnyEvent
    effects: list[Any]  # see recordable(); they read back as fingerprint() makes them


Record = Header | Entry
_ENC = msgspec.msgpack.Encoder()
_BYTES = (bytes, bytearray, memoryview)
_DEC = msgspec.msgpack.Decoder(Record)
_JSON = msgspec.json.Encoder()  # session logs; several times faster than json.dumps


def _digest(value: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(value).hexdigest()[:32]


_FOLDED: dict[type, tuple[str, ...]] = {}  # effect type -> its bytes fields
_BYTES_INFO = (msgspec.inspect.BytesType, msgspec.inspect.ByteArrayType,
               msgspec.inspect.MemoryViewType)


def _is_bytes(t: msgspec.inspect.Type) -> bool:
    kinds = t.types if isinstance(t, msgspec.inspect.UnionType) else (t,)
    return any(isinstance(k, _BYTES_INFO) for k in kinds)


def _bytes_fields(cls: type) -> tuple[str, ...]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType), cls
    return tuple(f.name for f in info.fields if _is_bytes(f.type))


def recordable(effect: fx.Effect) -> fx.Effect:
    """The effect as the journal stores it: its bytes fields (a result's output, kept once,
    in its event) replaced by their digests. On the hot path: one dict lookup for most."""
    names = _FOLDED.get(type(effect))
    if names is None:
        names = _FOLDED[type(effect)] = _bytes_fields(type(effect))
    if not names:
        return effect
    return msgspec.structs.replace(effect, **{
        n: _digest(v) for n in names if isinstance(v := getattr(effect, n), _BYTES)})


def fingerprint(effect: fx.Effect) -> Any:
    """An effect as plain data, exactly as it reads back from the journal (bytes fields as
    digests, tuples as lists); equal effects, equal prints."""
    return msgspec.msgpack.decode(_ENC.encode(recordable(effect)))


class Journal:
    def __init__(self, root: Path, segment_bytes: int, bytes_max: int) -> None:
        self.root = root
        self.segment_bytes = segment_bytes
        self.bytes_max = bytes_max
        self._file: IO[bytes] | None = None
        self._written = 0
        self.path: Path | None = None
        root.mkdir(parents=True, exist_ok=True)

    def open_segment(self, core: Core, now_ms: int) -> None:
        self.close()
        name = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now_ms / 1000))}-e{core.epoch}"
        path = self.root / f"{name}.tnj"
        n = 1
        while path.exists():
            n += 1
            path = self.root / f"{name}-{n}.tnj"
        self.path = path
        self._file = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 (kept open)
        self._written = 0
        self._write(Header(JOURNAL_VERSION, core.epoch, now_ms, pickle.dumps(core, protocol=5)))
        self._trim()

    def record(self, core: Core, event: Event, effects: list[fx.Effect]) -> None:
        if self._file is None:
            return
        self._write(Entry(event, [recordable(e) for e in effects]))  # type: ignore[arg-type]
        if self._written >= self.segment_bytes:
            self.open_segment(core, event.at_ms)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: Record) -> None:
        assert self._file is not None
        body = _ENC.encode(record)
        self._file.write(len(body).to_bytes(4, "big"))
        self._file.write(body)
        self._written += 4 + len(body)

    def _trim(self) -> None:
        """Delete the oldest segments while the journal is over its size limit."""
        segments = sorted(self.root.glob("*.tnj"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in segments)
        for old in segments[:-1]:
            if total <= self.bytes_max:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)


def read_segment(path: Path) -> Iterator[Record]:
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if len(head) < 4:
                return  # a segment cut short by a crash ends at its last whole record
            body = f.read(int.from_bytes(head, "big"))
            if len(body) < int.from_bytes(head, "big"):
                return
            yield _DEC.decode(body)


# ---- session logs ---------------------------------------------------------------------


class SessionLog:
    """A JSON Lines log of one WebSocket session's messages."""

    def __init__(self, root: Path, session_id: str, who: str, now_ms: int,
                 payload_bytes_max: int = 4096) -> None:
        self.payload_bytes_max = payload_bytes_max
        root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_ms / 1000))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in who)[:60]
        self.path = root / f"{stamp}-{session_id}-{safe}.jsonl"
        # buffered, flushed about once a second by the coordinator (and on close): a crash
        # loses at most the last second of a session's log, never the journal's order
        self._buffer = bytearray()  # no file is held open: 10,000 sessions, 0 extra fds
        self.path.touch()
        self._t0 = now_ms

    def write(self, direction: str, message: msgspec.Struct, now_ms: int) -> None:
        secret, payloads = _log_fields(type(message))
        changes: dict[str, Any] = dict.fromkeys(secret, "<redacted>")
        for key in payloads:
            value = getattr(message, key)
            if isinstance(value, msgspec.Raw | bytes | bytearray | memoryview):
                raw = bytes(value)
                changes[key] = {
                    "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()[:32],
                    "b64": base64.b64encode(raw).decode()
                    if len(raw) <= self.payload_bytes_max else None,
                }
        if changes:  # a copy for the log; replace() does not check types, the encoder agrees
            message = msgspec.structs.replace(message, **changes)
        self._buffer += (b'{"t":%d,"dir":%b,"msg":%b}\n' % (
            now_ms - self._t0, _JSON.encode(direction), _JSON.encode(message)))

    def flush(self) -> None:
        if self._buffer:
            with open(self.path, "ab") as f:
                f.write(self._buffer)
            self._buffer.clear()

    def close(self) -> None:
        self.flush()


_SECRET_WORDS = ("token", "password", "secret")
_LOGGED: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _log_fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A message type's secret fields (never logged) and bulk payload fields (bytes or Raw:
    logged as size, digest and, when small, base64); looked up once per type."""
    found = _LOGGED.get(cls)
    if found is None:
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType), cls
        secret = tuple(f.name for f in info.fields
                       if any(word in f.name.lower() for word in _SECRET_WORDS))
        payloads = tuple(f.name for f in info.fields
                         if _is_bytes(f.type) or isinstance(f.type, msgspec.inspect.RawType))
        found = _LOGGED[cls] = (secret, payloads)
    return found


def trim_session_logs(root: Path, bytes_max: int) -> None:
    if not root.is_dir():
        return
    logs = sorted(root.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in logs)
    for old in logs:
        if total <= bytes_max:
            break
        total -= old.stat().st_size
        os.unlink(old)
