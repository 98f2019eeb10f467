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
    which hands what was kept to the journal's writer thread as one batch once
    ``ENCODE_EVENTS`` wait or ``flush_ms`` passed, and starts a new segment past
    ``segment_bytes``.

    The writer thread encodes and writes the batches, so the event loop neither encodes nor
    waits for the disk: a slow or stuck disk never stalls the sessions, and the encoding can
    run while the loop waits for the network (the GIL is free then). Measured with no-op
    chunks: the journal is 0.2 % of the loop's samples in a sampling profiler, and the
    thread takes about 3.5 µs of CPU a chunk. A batch costs about 8 µs plus 2 µs an event
    to encode, so encoding each turn's events (under two) cost twice as much as batches of
    64. A crash loses at most the last ``flush_ms`` of the journal plus what the thread had
    not written yet, never its order; the database, not the journal, is what the
    coordinator restarts from."""

    ENCODE_EVENTS = 64

    def __init__(self, root: Path, segment_bytes: int, bytes_max: int,
                 flush_ms: int = 0, wait_for_writer: bool = False) -> None:
        self.root = root
        self.segment_bytes = segment_bytes
        self.bytes_max = bytes_max
        self.flush_ms = flush_ms
        # the writer's progress decides where segments end; waiting for it at each flush
        # makes that the same on every run (the simulator's journals compare byte for byte)
        self.wait_for_writer = wait_for_writer
        self._file: IO[bytes] | None = None  # the segment being written (None: stopped)
        self._events: list[Event] = []  # kept, not yet handed to the writer
        self._effects: list[list[fx.Effect]] = []
        self._core: Core | None = None  # the core they came from (for a new segment)
        self._flushed_ms = 0
        self.path: Path | None = None
        # the writer thread's work, in order: (file, record) to encode and write, (file, None)
        # to close, an Event to set once everything before it is done, or None: the thread
        # ends (``close`` sends it; a new segment starts a new thread)
        self._work: queue.SimpleQueue[
            tuple[IO[bytes], Record | None] | threading.Event | None] = queue.SimpleQueue()
        # set by the writer only: the file it writes and its size so far; the reason
        # recording stopped
        self._written: tuple[IO[bytes] | None, int] = (None, 0)
        self._failed: Exception | None = None
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
        self._work.put((self._file, Header(JOURNAL_VERSION, core.epoch, now_ms,
                                           pickle.dumps(core, protocol=5))))
        self._trim()

    def record(self, core: Core, event: Event, effects: list[fx.Effect]) -> None:
        """Keep ``event`` and the ``effects`` it produced (neither changes afterwards)."""
        if self._file is not None:
            self._events.append(event)
            self._effects.append(effects)
            self._core = core

    def maybe_flush(self, now_ms: int) -> None:
        """At the end of a turn: hand the events kept to the writer if enough wait or
        ``flush_ms`` passed since the last time; then begin a new segment if the writer
        has filled this one (the core's state is then exactly the state after the last
        recorded event, the new segment's snapshot)."""
        if len(self._events) >= self.ENCODE_EVENTS or now_ms - self._flushed_ms >= self.flush_ms:
            self.flush()
            self._flushed_ms = now_ms
            if self.wait_for_writer:
                self.sync()
            file, size = self._written
            if file is self._file and size >= self.segment_bytes and self._core is not None:
                self.open_segment(self._core, now_ms)

    def flush(self) -> None:
        """Hand what was kept to the writer (``sync`` waits until it is on the file)."""
        if self._failed is not None:
            self._stop()
        if self._events and self._file is not None:
            self._work.put((self._file, Batch(self._events, self._effects)))  # type: ignore[arg-type]
        self._events, self._effects = [], []

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
        buf = bytearray()
        encode_into = msgspec.msgpack.Encoder(enc_hook=_length).encode_into  # this thread's
        while True:
            work = self._work.get()
            if work is None:
                return
            if isinstance(work, threading.Event):
                work.set()
                continue
            file, record = work
            if record is None:
                try:
                    file.close()  # writes what the file still buffers
                except Exception as exc:
                    if not failed:  # (after a failed write, closing fails alike: said)
                        self._report_write_failure(file, exc)
                    failed, self._failed = True, self._failed or exc
                continue
            if failed:
                continue
            try:
                buf[:] = b"\0\0\0\0"  # the record behind its 4-byte length
                encode_into(record, buf, 4)
            except Exception as exc:  # a bug: recording is worth less than serving
                log.exception("journal: cannot record a %s; recording stops until the "
                              "coordinator restarts: report this as a bug",
                              type(record).__name__)
                failed, self._failed = True, exc
                continue
            buf[:4] = (len(buf) - 4).to_bytes(4, "big")
            try:  # a buffered file writes all or raises: whole records
                file.write(buf)
                file.flush()
            except Exception as exc:  # disk full, file too large: serving matters more
                self._report_write_failure(file, exc)
                failed, self._failed = True, exc
                continue
            last, size = self._written
            self._written = (file, (size if last is file else 0) + len(buf))

    @staticmethod
    def _report_write_failure(file: IO[bytes], exc: Exception) -> None:
        log.error("journal: writing %s failed (%s); recording stops until the coordinator "
                  "restarts: free disk space or lower TN_JOURNAL_BYTES_MAX",
                  getattr(file, "name", file), exc)

    def _stop(self) -> None:
        """Stop recording after a failed write: the segment ends at its last whole record."""
        self._end_segment()
        self._events, self._effects = [], []

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

    def _trim(self) -> None:
        """Delete the oldest segments while the journal is over its size limit, never the
        one just begun (the writer may still be finishing the one before it, which can make
        that one look newer)."""
        segments = sorted(self.root.glob("*.tnj"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in segments)
        for old in segments:
            if total <= self.bytes_max:
                break
            if old != self.path:
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
