"""Replay a recorded journal through a fresh core and check it does exactly the same.

    python -m coordinator.replay JOURNAL [--until MS] [--session S]   (also `tn replay`)
    python -m coordinator.replay JOURNAL --explain LEASE_ID | TASK:CHUNK
    python -m coordinator.replay SESSION_LOG.jsonl --against ws://HOST:PORT --token T
                                 [--speed N | --fast]

JOURNAL is a segment file or a journal directory (all segments, oldest first). Each segment
starts from its own snapshot, so any one replays alone. Prints "identical" with counts and
a digest, or the first divergent effect with the chain of events that led to it, and exits
non-zero. A journal recorded by a build whose core classes or events differ cannot be
loaded: replay it with the build that recorded it (exit status 2).

A worker session log (``<data-dir>/sessions/*.jsonl``) with ``--against`` re-drives a live
coordinator with the session's inbound messages and reports where its answers differ from
the recorded ones (see coordinator/redrive.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import pickle
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import Event
from coordinator.recorder import READS, Entry, Header, fingerprint, read_segment

HISTORY = 4096  # events kept to explain a divergence
CHAIN_SHOWN = 20  # of which the last this many are shown


@dataclass
class Report:
    segments: int = 0
    events: int = 0
    effects: int = 0
    digest: str = ""
    divergence: str | None = None
    lines: list[str] = field(default_factory=list)


class IncompatibleRecording(Exception):
    """The recording was made by a build whose core classes or events differ from this one."""


def segments(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(path.glob("*.tnj"), key=lambda p: (_started_ms(p), p.name))
        if not found:
            raise SystemExit(f"no journal segments (*.tnj) in {path}")
        return found
    if not path.is_file():
        raise SystemExit(f"{path} is neither a journal segment nor a journal directory")
    return [path]


def _started_ms(path: Path) -> int:
    """When a segment began (names alone misorder two segments begun in the same second)."""
    for record in _records(path):
        return record.started_ms if isinstance(record, Header) else 0
    return 0


def _records(path: Path) -> Iterator[Header | Entry]:
    try:
        yield from read_segment(path)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise IncompatibleRecording(
            f"{path.name}: a record does not decode with this build's events ({exc}); the "
            "journal was recorded by a build whose events differ"
        ) from exc


def load_snapshot(path: Path, header: Header) -> Core:
    """The core a segment starts from; IncompatibleRecording if its classes changed."""
    if header.version not in READS:
        raise IncompatibleRecording(
            f"{path.name}: journal format {header.version}, but this build reads formats "
            f"{', '.join(map(str, READS))}; replay it with the build that recorded it")
    try:
        core = pickle.loads(header.snapshot)
    except Exception as exc:  # any unpickling failure means the classes moved on
        raise IncompatibleRecording(
            f"{path.name}: its core snapshot does not load with this build's core classes "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(core, Core):
        raise IncompatibleRecording(f"{path.name}: its snapshot is a {type(core).__name__}")
    missing = _missing_attributes(core)
    if missing:
        raise IncompatibleRecording(
            f"{path.name}: its core snapshot lacks {', '.join(missing)}: it was recorded by a "
            "build whose core classes differ")
    _wrap_outputs(core)
    return core


def _wrap_outputs(core: Core) -> None:
    """Votes held in a format-2 snapshot have plain bytes outputs; the core that recorded it
    folded them out of effects by type, as this one does by ``fx.Output``: wrap them, so a
    result decided by such a vote fingerprints as recorded."""
    for task in core.tasks.values():
        for chunk, votes in task.votes.items():
            task.votes[chunk] = [dataclasses.replace(v, output=fx.Output.of(v.output))
                                 for v in votes]


def _missing_attributes(core: Core) -> list[str]:
    """Attributes this build's core expects that an unpickled (older) one does not have."""
    try:
        fresh = Core(core.config, core.epoch)
    except Exception as exc:
        return [f"a usable config ({type(exc).__name__}: {exc})"]
    missing = [f"Core.{name}" for name in vars(fresh) if not hasattr(core, name)]
    for name, part in vars(fresh).items():
        old = getattr(core, name, None)
        if hasattr(part, "__dict__") and type(part).__module__.startswith("coordinator.core"):
            missing += [f"{type(part).__name__}.{a}" for a in vars(part) if not hasattr(old, a)]
    for table in (core.tasks, core.leases, core.sessions):
        for item in list(table.values())[:1]:
            assert dataclasses.is_dataclass(item)
            names = [f.name for f in dataclasses.fields(item)]
            missing += [f"{type(item).__name__}.{a}" for a in names if not hasattr(item, a)]
    return missing


def _keys(obj: Any) -> set[str]:
    """What an event or effect is about: its session, lease, task and chunk."""
    data = obj if isinstance(obj, dict) else msgspec.to_builtins(obj, enc_hook=bytes)
    out = set()
    for name in ("session_id", "lease_id", "task_id"):
        if data.get(name) is not None:
            out.add(f"{name}={data[name]}")
    if data.get("task_id") is not None and data.get("chunk_index", data.get("chunk")) is not None:
        out.add(f"chunk={data['task_id']}:{data.get('chunk_index', data.get('chunk'))}")
    message = data.get("message")
    if isinstance(message, dict) and message.get("lease_id") is not None:
        out.add(f"lease_id={message['lease_id']}")
    held = [*data.get("held_leases", ())]  # a hello's claims, a welcome's answer to them
    if isinstance(message, dict):
        held += [*message.get("resumed", ()), *message.get("dropped", ())]
    out.update(f"lease_id={lease}" for lease in held)
    return out


def _describe(event: Event) -> str:
    data = msgspec.to_builtins(event, enc_hook=lambda b: f"<{len(b)} bytes>")
    tag = data.pop("ev")
    eid, at = data.pop("eid"), data.pop("at_ms")
    rest = ", ".join(f"{k}={v!r}" for k, v in data.items() if k != "output")
    return f"#{eid} at {at} {tag}({rest})"


def _entries(paths: list[Path]) -> Iterator[tuple[Path, Core | None, Entry | None]]:
    for path in paths:
        for record in _records(path):
            if isinstance(record, Header):
                yield path, load_snapshot(path, record), None
            else:
                yield path, None, record


def replay(path: Path, until_ms: int | None = None, session: str | None = None) -> Report:
    report = Report()
    digest = hashlib.sha256()
    history: deque[tuple[Event, set[str], list[Any]]] = deque(maxlen=HISTORY)
    core: Core | None = None
    for seg, snapshot, entry in _entries(segments(path)):
        if snapshot is not None:
            core, report.segments = snapshot, report.segments + 1
            continue
        assert entry is not None and core is not None, f"{seg}: an event before any header"
        event = entry.event
        if until_ms is not None and event.at_ms > until_ms:
            break
        got = [fingerprint(e) for e in core.handle(event)]
        keys = _keys(event) | {k for e in got for k in _keys(e)}
        history.append((event, keys, got))
        report.events += 1
        report.effects += len(got)
        if got != entry.effects:
            report.divergence = _divergence(seg, event, entry.effects, got, history)
            return report
        digest.update(msgspec.msgpack.encode(got))
        if session is not None and f"session_id={session}" in keys:
            report.lines.append(_describe(event))
    report.digest = digest.hexdigest()[:16]
    return report


def _divergence(seg: Path, event: Event, want: list[Any], got: list[Any],
                history: deque[tuple[Event, set[str], list[Any]]]) -> str:
    i = next((n for n, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
             min(len(want), len(got)))
    expected = want[i] if i < len(want) else "(nothing)"
    actual = got[i] if i < len(got) else "(nothing)"
    keys = _keys(expected if isinstance(expected, dict) else {}) | _keys(
        actual if isinstance(actual, dict) else {}) | _keys(event)
    chain = [(e, effects) for e, k, effects in history if k & keys and e is not event]
    lines = [
        f"DIVERGED in {seg.name} at event {_describe(event)}",
        f"  effect #{i}: recorded {expected}",
        f"  effect #{i}: replayed {actual}",
        f"  caused by event #{event.eid}; the events before it about {', '.join(sorted(keys))}"
        " (with their effects on those):",
    ]
    for e, effects in chain[-CHAIN_SHOWN:]:
        lines.append(f"    {_describe(e)}")
        lines += [f"      -> {_summary(x)}" for x in effects
                  if x.get("fx") != "task_changed" and _keys(x) & keys]
    return "\n".join(lines)


def _summary(effect: dict[str, Any], width: int = 240) -> str:
    text = str({k: v for k, v in effect.items() if k not in ("cause", "output")})
    return text if len(text) <= width else text[: width - 3] + "..."


def explain(path: Path, target: str) -> list[str]:
    """The story of a lease (an id) or a chunk (TASK:CHUNK): every event and effect that
    mentions it or its leases, and the end of the sessions that held them. Snapshots are not
    loaded, so a recording of another build can be explained as long as its events decode."""
    want = f"chunk={target}" if ":" in target else f"lease_id={target}"
    leases = {want} if want.startswith("lease_id=") else set()
    holders: dict[str, str] = {}  # session -> the lease it was granted, until it ends
    lines: list[str] = []
    shown_segment = None
    for seg in segments(path):
        for entry in _records(seg):
            if isinstance(entry, Header):
                continue
            keys = _keys(entry.event)
            ended = entry.event.__struct_config__.tag == "closed" and keys & holders.keys()
            hits = [e for e in entry.effects if _about(e, want, leases, set(holders))]
            if not (want in keys or keys & leases or hits or ended):
                continue
            if shown_segment != seg:
                lines.append(f"== {seg.name}")
                shown_segment = seg
            lines.append(_describe(entry.event))
            for e in hits:
                lease = f"lease_id={e.get('lease_id')}"
                if e.get("fx") == "assign":
                    leases.add(lease)
                    holders[f"session_id={e['session_id']}"] = lease
                elif e.get("fx") in ("p_result", "p_failure"):  # the lease is over
                    holders = {s: x for s, x in holders.items() if x != lease}
                lines.append(f"    -> {_summary(e, 400)}")
    return lines or [f"nothing in the journal mentions {target}"]


def _about(effect: dict[str, Any], want: str, leases: set[str], holders: set[str]) -> bool:
    keys = _keys(effect)
    if effect.get("fx") == "close":
        return bool(keys & holders)
    return want in keys or bool(keys & leases)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tn replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("journal", type=Path, metavar="JOURNAL",
                   help="a .tnj segment or a journal directory; with --against, a worker "
                        "session log (.jsonl)")
    p.add_argument("--until", type=int, default=None, metavar="MS",
                   help="stop after events at this time (ms since the epoch)")
    p.add_argument("--session", default=None, help="also list the events of this session")
    p.add_argument("--explain", default=None, metavar="LEASE|TASK:CHUNK",
                   help="print the story of one lease or chunk instead")
    live = p.add_argument_group("re-driving a live coordinator with a worker session log")
    live.add_argument("--against", default=None, metavar="ws://HOST:PORT",
                      help="the coordinator to re-drive (JOURNAL is then a session log .jsonl)")
    live.add_argument("--token", default=None,
                      help="a worker token of that coordinator (default: $TN_TOKEN)")
    pace = live.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="N",
                      help="N times the recorded speed (default 1)")
    pace.add_argument("--fast", action="store_true", help="no pauses between messages")
    live.add_argument("--wait-ms", type=int, default=5000, metavar="MS",
                      help="how long to wait for each recorded answer (default 5000)")
    args = p.parse_args(argv)
    if args.journal.suffix == ".jsonl" or args.against is not None:
        if args.journal.suffix != ".jsonl" or args.against is None:
            p.error("re-driving needs a worker session log (.jsonl) and --against ws://HOST:PORT")
        from coordinator import redrive  # the live side: a WebSocket client

        return redrive.main(args.journal, args.against, args.token,
                            None if args.fast else args.speed, args.wait_ms)
    try:
        return _replay_main(args)
    except IncompatibleRecording as exc:
        print(f"cannot replay: {exc}.\nReplay it with the build that recorded it.",
              file=sys.stderr)
        return 2


def _replay_main(args: argparse.Namespace) -> int:
    if args.explain:
        print("\n".join(explain(args.journal, args.explain)))
        return 0
    report = replay(args.journal, args.until, args.session)
    for line in report.lines:
        print(line)
    if report.divergence is not None:
        print(report.divergence)
        print(f"after {report.events} events in {report.segments} segment(s)")
        return 1
    print(f"identical: {report.segments} segment(s), {report.events} events, "
          f"{report.effects} effects, digest {report.digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
