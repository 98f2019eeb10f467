"""Recording: the journal of every event that entered the core, and per-session logs.

Journal (``<data-dir>/journal/``): segments of length-prefixed MessagePack records. A segment
opens with a header carrying the core's configuration and a snapshot of its whole state,
so it replays on its own; then batches of events (see Journal): each event exactly as
the core saw it (its id and time included) and a fingerprint of each effect it produced
(bytes fields are replaced by their length, so a result's output is stored once, in its
event; the effects that carry bytes also carry the coordinator's digest of them). Readers
see one ``Entry`` per event either way (format 2 wrote a record per event; it still reads).
Segments rotate at ``journal_segment_bytes``; the oldest are deleted past
``journal_bytes_max``.

Session logs, the other half of a recording, are in coordinator/sessionlogs.py.

The snapshot is a pickle of the core: replay it only from recordings you trust (your own
coordinator's), as you would any pickle.
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import AnyEvent, Event

log = logging.getLogger("tn.recorder")
JOURNAL_VERSION = 3  # 2: bytes fields of effects recorded as their length; 3: batches
READS = (2, 3)  # formats this build replays (format 3 only adds the batch record)


class Header(msgspec.Struct, frozen=True, tag="header", tag_field="kind"):
    version: int
    epoch: int
    started_ms: int
    snapshot: bytes  # pickle of the Core before the segment's first event


class Entry(msgspec.Struct, frozen=True, tag="event", tag_field="kind"):
    event: AnyEvent
    effects: list[Any]  # they read back as fingerprint() makes them


class Batch(msgspec.Struct, frozen=True, tag="batch", tag_field="kind"):
    """Events and, for each, its effects (``effects[i]`` are ``events[i]``'s), encoded in one
    call (see Journal)."""

    events: list[AnyEvent]
    effects: list[list[Any]]


Record = Header | Entry | Batch


def _length(obj: Any) -> Any:
    if type(obj) is fx.Output:
        return len(obj)
    raise NotImplementedError(f"the journal cannot record a {type(obj).__name__}")


_ENC = msgspec.msgpack.Encoder(enc_hook=_length)  # effects' outputs go in as their length
_DEC = msgspec.msgpack.Decoder(Record)


def fingerprint(effect: fx.Effect) -> Any:
    """An effect as plain data, exactly as it reads back from the journal (outputs as their
    lengths, tuples as lists); equal effects, equal prints."""
    return msgspec.msgpack.decode(_ENC.encode(effect))


class Journal:
    """Appends records to the current segment. The core loop calls ``record`` per event (on
    the hot path: it only keeps the event and its effects) and ``maybe_flush`` once per turn,
    which encodes what was kept as one batch record once ``ENCODE_EVENTS`` wait, hands the
    encoded records to the journal's writer thread every ``flush_ms`` (or past
    ``WRITE_BYTES``), and starts a new segment past ``segment_bytes``.

    Measured in the running coordinator (2,000-3,000 events a second, under two a turn): a
    batch costs about 8 µs plus 2 µs an event, so encoding each turn's events cost twice as
    much as batches of 64. A thread of the journal's own writes the segment: the event loop
    only hands it bytes, so a slow or stuck disk never stalls the sessions (the GIL is free
    while the thread is in the kernel). A crash loses at most the last ``flush_ms`` plus a
    tick of the journal, never its order; the database, not the journal, is what the
    coordinator restarts from."""

    ENCODE_EVENTS = 64
    WRITE_BYTES = 1 << 20

    def __init__(self, root: Path, segment_bytes: int, bytes_max: int,
                 flush_ms: int = 0) -> None:
        self.root = root
        self.segment_bytes = segment_bytes
        self.bytes_max = bytes_max
        self.flush_ms = flush_ms
        self._file: IO[bytes] | None = None  # the segment being written (None: stopped)
        self._events: list[Event] = []  # kept, not yet encoded
        self._effects: list[list[fx.Effect]] = []
        self._core: Core | None = None  # the core they came from (for a new segment)
        self._buffer = bytearray()  # records encoded, not yet handed to the writer
        self._flushed_ms = 0
        self._written = 0
        self.path: Path | None = None
        # the writer thread's work, in order: (file, bytes) to write, (file, None) to close,
        # or an Event to set once everything before it is done
        # (or None: the thread ends; ``close`` sends it, a new segment starts a new thread)
        self._work: queue.SimpleQueue[
            tuple[IO[bytes], bytes | None] | threading.Event | None] = queue.SimpleQueue()
        self._failed: OSError | None = None  # set by the writer: recording stops
        self._writer: threading.Thread | None = None
        root.mkdir(parents=True, exist_ok=True)

    def open_segment(self, core: Core, now_ms: int) -> None:
        self._end_segment()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="tn-journal",
                                            daemon=True)
            self._writer.start()
        name = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now_ms / 1000))}-e{core.epoch}"
        path = self.root / f"{name}.tnj"
        n = 1
        while path.exists():
            n += 1
            path = self.root / f"{name}-{n}.tnj"
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 (the writer thread closes it)
        self._written = 0
        self._append(Header(JOURNAL_VERSION, core.epoch, now_ms,
                            pickle.dumps(core, protocol=5)))
        self.flush()
        self._trim()

    def record(self, core: Core, event: Event, effects: list[fx.Effect]) -> None:
        """Keep ``event`` and the ``effects`` it produced (neither changes afterwards)."""
        if self._file is not None:
            self._events.append(event)
            self._effects.append(effects)
            self._core = core

    def maybe_flush(self, now_ms: int) -> None:
        """At the end of a turn: encode the events kept if enough wait; hand them to the
        writer if ``flush_ms`` passed since the last time or much waits; then begin a new
        segment if this one is full (the core's state is then exactly the state after the
        last recorded event, the new segment's snapshot)."""
        if len(self._events) >= self.ENCODE_EVENTS:
            self._encode()
        if now_ms - self._flushed_ms >= self.flush_ms or len(self._buffer) >= self.WRITE_BYTES:
            self.flush()
            self._flushed_ms = now_ms
            if self._written >= self.segment_bytes and self._core is not None:
                self.open_segment(self._core, now_ms)

    def _encode(self) -> None:
        if self._events:
            self._append(Batch(self._events, self._effects))  # type: ignore[arg-type]
            self._events, self._effects = [], []

    def flush(self) -> None:
        """Encode what was kept and hand it to the writer (``sync`` waits for the disk)."""
        if self._failed is not None:
            self._stop()
        self._encode()
        if self._file is not None and self._buffer:
            self._work.put((self._file, bytes(self._buffer)))
        self._buffer.clear()

    def sync(self) -> None:
        """Wait until the writer has written everything handed to it."""
        if self._writer is not None:
            done = threading.Event()
            self._work.put(done)
            done.wait()
        if self._failed is not None:
            self._stop()

    def _write_loop(self) -> None:
        failed = False
        while True:
            work = self._work.get()
            if work is None:
                return
            if isinstance(work, threading.Event):
                work.set()
                continue
            file, data = work
            try:
                if data is None:
                    file.close()
                elif not failed:  # a buffered file writes all or raises: whole records
                    file.write(data)
                    file.flush()
            except Exception as exc:  # disk full, file too large: serving matters more
                log.error("journal: writing %s failed (%s); recording stops until the "
                          "coordinator restarts: free disk space or lower "
                          "TN_JOURNAL_BYTES_MAX", getattr(file, "name", file), exc)
                failed = True
                self._failed = exc if isinstance(exc, OSError) else OSError(str(exc))

    def _stop(self) -> None:
        """Stop recording after a failed write: the segment ends at its last whole record."""
        self._end_segment()
        self._events, self._effects = [], []
        self._buffer.clear()

    def _end_segment(self) -> None:
        """Hand over what was kept, then have the writer close the segment."""
        if self._failed is None:
            self.flush()
        file, self._file = self._file, None
        if file is not None:
            self._work.put((file, None))

    def close(self) -> None:
        """Write what was kept and close the segment; returns once it is on its file and
        the writer thread has ended."""
        self._end_segment()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._work.put(None)
            writer.join()
        self._events, self._effects = [], []
        self._buffer.clear()

    def _append(self, record: Record) -> None:
        """Encode ``record`` behind its 4-byte length, in place at the buffer's end."""
        buf = self._buffer
        start = len(buf)
        buf += b"\0\0\0\0"
        _ENC.encode_into(record, buf, start + 4)
        size = len(buf) - start - 4
        buf[start:start + 4] = size.to_bytes(4, "big")
        self._written += 4 + size

    def _trim(self) -> None:
        """Delete the oldest segments while the journal is over its size limit."""
        segments = sorted(self.root.glob("*.tnj"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in segments)
        for old in segments[:-1]:
            if total <= self.bytes_max:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)


def read_segment(path: Path) -> Iterator[Header | Entry]:
    """A segment's header, then one ``Entry`` per event (batches are unpacked)."""
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if len(head) < 4:
                return  # a segment cut short by a crash ends at its last whole record
            body = f.read(int.from_bytes(head, "big"))
            if len(body) < int.from_bytes(head, "big"):
                return
            record = _DEC.decode(body)
            if isinstance(record, Batch):
                if len(record.events) != len(record.effects):
                    raise msgspec.ValidationError(
                        f"a batch of {len(record.events)} events has "
                        f"{len(record.effects)} lists of effects")
                yield from map(Entry, record.events, record.effects)
            else:
                yield record
