"""The journal's format (issue 7): batches of events, outputs once, older formats, bad files."""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coordinator import replay
from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import ResultIn, TaskSubmitted
from coordinator.core.state import Vote
from coordinator.recorder import Batch, Entry, Header, Journal, fingerprint, read_segment

OUT = msgspec.msgpack.encode([1, 2])


class Stray(bytes):
    """Bytes of a kind the journal does not know (only ``fx.Output`` is expected)."""


def raw_records(path: Path) -> list[dict[str, Any]]:
    data, at, out = path.read_bytes(), 0, []
    while at < len(data):
        n = int.from_bytes(data[at:at + 4], "big")
        out.append(msgspec.msgpack.decode(data[at + 4:at + 4 + n]))
        at += 4 + n
    return out


def write_records(path: Path, records: list[Any]) -> None:
    with open(path, "wb") as f:
        for rec in records:
            body = msgspec.msgpack.encode(rec)
            f.write(len(body).to_bytes(4, "big") + body)


def test_events_go_in_batches_and_read_back_one_entry_each(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1 << 30, 1 << 30, flush_ms=60_000)
    journal.open_segment(Core(CoreConfig(), 1), 0)
    for i in range(150):
        event = ResultIn(i + 1, 1_000 + i, "s1.1", i, OUT, "d")
        journal.record(Core(CoreConfig(), 1), event, [
            fx.PersistResult(i + 1, "t", i, i, "a", "w", fx.Output(OUT), "d", 2, 1_000 + i),
            fx.TaskChanged(i + 1, "t")])
        journal.maybe_flush(1_000 + i)
    assert journal.path is not None
    path = journal.path
    journal.sync()  # what was handed to the writer is on the file: full batches only
    assert [r["kind"] for r in raw_records(path)] == ["header", "batch", "batch"]
    journal.close()
    records = raw_records(path)
    assert [(r["kind"], len(r.get("events", ()))) for r in records] == [
        ("header", 0), ("batch", Journal.ENCODE_EVENTS), ("batch", Journal.ENCODE_EVENTS),
        ("batch", 150 - 2 * Journal.ENCODE_EVENTS)]
    entries = [r for r in read_segment(path) if isinstance(r, Entry)]
    assert [e.event.eid for e in entries] == list(range(1, 151))
    for e in entries:  # the output in full in the event, as its length in the effect
        assert isinstance(e.event, ResultIn) and e.event.output == OUT
        assert e.effects[0]["fx"] == "p_result" and e.effects[0]["output"] == len(OUT)
        assert e.effects[1] == {"fx": "task_changed", "cause": e.event.eid, "task_id": "t"}


def test_fingerprints_read_as_the_journal_stores_effects() -> None:
    effect = fx.PersistVote(3, "t", 0, 9, "a", "w", "d", fx.Output(b"\x01\x02\x03"), 5)
    assert fingerprint(effect)["output"] == 3
    assert effect.output == b"\x01\x02\x03"  # bytes in every other way
    with pytest.raises((TypeError, NotImplementedError), match="Stray"):
        fingerprint(msgspec.structs.replace(effect, output=Stray(b"x")))  # type: ignore[arg-type]


def _golden_segment() -> Path:
    return next((Path(__file__).parent / "golden" / "normal").glob("*.tnj"))


def test_a_format_2_journal_one_record_per_event_still_replays(tmp_path: Path) -> None:
    records = list(read_segment(_golden_segment()))
    header = records[0]
    assert isinstance(header, Header)
    old = tmp_path / "old.tnj"
    write_records(old, [msgspec.structs.replace(header, version=2), *records[1:]])
    assert all(r["kind"] == "event" for r in raw_records(old)[1:])
    report = replay.replay(old)
    assert report.divergence is None and report.events == len(records) - 1


def test_unknown_formats_and_torn_batches_are_refused_clearly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header, *rest = read_segment(_golden_segment())
    assert isinstance(header, Header) and isinstance(rest[0], Entry)
    future = tmp_path / "future.tnj"
    write_records(future, [msgspec.structs.replace(header, version=99)])
    assert replay.main([str(future)]) == 2
    err = capsys.readouterr().err
    assert "journal format 99, but this build reads formats 2, 3" in err
    assert "replay it with the build that recorded it" in err

    torn = tmp_path / "torn.tnj"
    write_records(torn, [header, Batch([rest[0].event, rest[1].event], [rest[0].effects])])
    assert replay.main([str(torn)]) == 2
    assert "a batch of 2 events has 1 lists of effects" in capsys.readouterr().err


def test_votes_held_in_a_format_2_snapshot_fingerprint_as_recorded(tmp_path: Path) -> None:
    """Format 2 cores held votes' outputs as plain bytes (and folded them out of effects by
    type): replay wraps them, so a result such a vote decides records its output's length."""
    core = Core(CoreConfig(), 1)
    core.handle(TaskSubmitted(1, 10, "t_1", "alice", "t", 2, 2, 1, 4, 3, 60_000, [], "code"))
    core.tasks["t_1"].votes[0] = [Vote(7, "a_1", "w1", "d", OUT, 10)]  # type: ignore[arg-type]
    path = tmp_path / "old.tnj"
    header = Header(2, 1, 0, pickle.dumps(core, protocol=5))
    write_records(path, [header])
    loaded = replay.load_snapshot(path, header)
    [vote] = loaded.tasks["t_1"].votes[0]
    assert type(vote.output) is fx.Output and vote.output == OUT
    effect = fx.PersistResult(2, "t_1", 0, 7, "a_1", "w1", vote.output, "d", 1, 20)
    assert fingerprint(effect)["output"] == len(OUT)


def test_the_caller_never_waits_for_the_disk(tmp_path: Path) -> None:
    """The event loop hands batches of events over; a writer thread encodes and writes
    them. A write stuck on the disk holds up neither ``flush`` nor the next events."""
    journal = Journal(tmp_path, 1 << 30, 1 << 30, flush_ms=0)
    journal.open_segment(Core(CoreConfig(), 1), 0)
    journal.sync()
    entered, gate = threading.Event(), threading.Event()

    class StuckDisk:
        def __init__(self, real: Any) -> None:
            self.real = real

        def write(self, data: bytes) -> int:
            entered.set()
            assert gate.wait(10), "flush waited for the disk"
            return int(self.real.write(data))

        def flush(self) -> None:
            self.real.flush()

        def close(self) -> None:
            self.real.close()

    journal._file = StuckDisk(journal._file)  # type: ignore[assignment]
    for i in range(3):
        journal.record(Core(CoreConfig(), 1), ResultIn(i + 1, i, "s1.1", i, OUT, "d"), [])
        journal.flush()  # returns while the writer is stuck in the first write
    assert entered.wait(10)
    gate.set()
    journal.close()
    assert journal.path is not None
    assert [e.event.eid for e in read_segment(journal.path) if isinstance(e, Entry)] == [1, 2, 3]


def test_segments_rotate_on_the_size_the_writer_reports(tmp_path: Path) -> None:
    """As in the coordinator (no waiting for the writer at each flush): a segment ends once
    the writer has reported it full; every segment opens with its snapshot and no event is
    lost or repeated. Trimming never deletes the segment just begun, even when the writer
    finishing the one before makes that one look newer."""
    journal = Journal(tmp_path, segment_bytes=4_000, bytes_max=1 << 30, flush_ms=0)
    journal.open_segment(Core(CoreConfig(), 1), 0)
    for i in range(600):
        journal.record(Core(CoreConfig(), 1), ResultIn(i + 1, i, "s1.1", i, OUT, "d"), [
            fx.PersistResult(i + 1, "t", i, i, "a", "w", fx.Output(OUT), "d", 2, i)])
        journal.maybe_flush(i)
        if i % 50 == 49:
            journal.sync()  # let the writer catch up now and then, as it does between turns
    journal.sync()
    segments = replay.segments(tmp_path)
    assert len(segments) > 3
    eids = []
    for seg in segments:
        records = list(read_segment(seg))
        assert isinstance(records[0], Header)
        eids += [r.event.eid for r in records[1:] if isinstance(r, Entry)]
    assert eids == list(range(1, 601))

    assert journal.path is not None
    current, before = journal.path, segments[-2]
    os.utime(before, (time.time() + 60, time.time() + 60))  # written after ``current`` began
    journal.bytes_max = 1
    journal._trim()
    assert current.exists() and not before.exists()
    journal.close()


def test_a_record_the_encoder_refuses_stops_recording_not_the_loop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A bug (an effect holding bytes of an unknown kind) is reported with its traceback;
    recording stops at the last whole batch; the caller never sees an exception."""
    journal = Journal(tmp_path, 1 << 30, 1 << 30, flush_ms=0)
    journal.open_segment(Core(CoreConfig(), 1), 0)
    good = ResultIn(1, 1, "s1.1", 1, OUT, "d")
    journal.record(Core(CoreConfig(), 1), good, [])
    journal.flush()
    bad = ResultIn(2, 2, "s1.1", 2, OUT, "d")
    journal.record(Core(CoreConfig(), 1), bad, [
        fx.PersistResult(2, "t", 0, 2, "a", "w", Stray(b"x"), "d", 1, 2)])  # type: ignore[arg-type]
    journal.maybe_flush(2)
    journal.sync()
    assert "cannot record a Batch" in caplog.text and "report this as a bug" in caplog.text
    journal.record(Core(CoreConfig(), 1), ResultIn(3, 3, "s1.1", 3, OUT, "d"), [])
    journal.maybe_flush(3)  # sees the failure: recording stops
    assert journal._file is None
    journal.close()
    assert journal.path is not None
    assert [e.event.eid for e in read_segment(journal.path) if isinstance(e, Entry)] == [1]
