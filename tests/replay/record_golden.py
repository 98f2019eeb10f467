"""Record the golden journals of tests/replay from real runs (``make golden``).

    .venv/bin/python -m tests.replay.record_golden [--out DIR] [--keep] [SCENARIO ...]

Each scenario starts a real ``tn-coordinator`` (the fixed settings of ``SETTINGS``: fast
heartbeats, a starting wallet, a 10 % fee, the journal flushed every turn) on a temporary
data directory with real ``tn-worker`` processes, runs one small task and copies what the
coordinator recorded into ``DIR/<scenario>/`` (default tests/replay/golden): the journal
segments, in the order they were written, as ``segN-eEPOCH.tnj``; one worker session log as
``session-WORKER.jsonl``; and ``scenario.json`` (settings, task, what happened) so a test can
run the same task again.

- ``normal``: one worker runs a small priced task to completion;
- ``worker_killed``: a worker holding two chunks is killed with SIGKILL mid-chunk and the
  other worker finishes them;
- ``coordinator_crash``: the coordinator is killed with SIGKILL mid-task and restarted on
  the same data directory; the workers reconnect and finish (two segments, one per boot).

Run it whenever the core's behaviour changes on purpose (the golden replay tests then report
a divergence) or its classes change (they report that a snapshot cannot be loaded), and
commit the new files with the change. The tokens of a run exist only in its temporary data
directory; the recordings are checked for them before they are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.core.events import ProgressIn, SessionHello
from coordinator.recorder import Header, read_segment
from coordinator.replay import segments
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator, Worker
from tests.e2e.waiting import wait_until

GOLDEN = Path(__file__).parent / "golden"
SIZE_MAX = 300_000  # bytes per scenario: golden journals stay small
# the journal written every turn: the killed worker is seen mid-chunk in it, and the crash
# scenario keeps every event up to the kill
SETTINGS = {**FAST_ENV, "DEV_INITIAL_WALLET": "100000", "PLATFORM_FEE_PERCENT": "10",
            "TN_JOURNAL_FLUSH_MS": "0"}


def _code(seconds_per_item: float) -> str:
    return ("import time\n\ndef process(item):\n"
            f"    time.sleep({seconds_per_item})\n"
            "    return {'item': item, 'square': item * item}\n")


@dataclass
class Scenario:
    name: str
    about: str
    code: str
    items: list[int]
    spec: dict[str, Any]
    run: Callable[[Cluster, Coordinator, dict[str, Any]], list[Worker]]


@dataclass
class Recording:
    out: Path
    data_dir: Path
    tokens: dict[str, str]
    facts: dict[str, Any] = field(default_factory=dict)


def _submit(coord: Coordinator, sc: Scenario) -> str:
    task_id: str = coord.api().submit(sc.code, sc.items, sc.spec)["id"]
    return task_id


def _finish(coord: Coordinator, task_id: str, workers: list[Worker]) -> dict[str, Any]:
    info = coord.api().wait_state(task_id, timeout_s=60, watch=tuple(workers))
    assert info["state"] == "completed", info
    return info


def _normal(cluster: Cluster, coord: Coordinator, facts: dict[str, Any]) -> list[Worker]:
    worker = cluster.worker(coord, "gw1", slots=2)
    task_id = _submit(coord, NORMAL)
    _finish(coord, task_id, [worker])
    facts.update(task_id=task_id, session_worker="gw1")
    return [worker]


def _worker_killed(cluster: Cluster, coord: Coordinator, facts: dict[str, Any]) -> list[Worker]:
    workers = {wid: cluster.worker(coord, wid, slots=2, extra_args=["--prefetch", "0"],
                                   wait=False) for wid in ("gk1", "gk2")}
    for worker in workers.values():
        worker.wait_connected()
    api = coord.api()
    task_id = _submit(coord, WORKER_KILLED)

    def leased_to() -> dict[str, list[int]]:
        held: dict[str, list[int]] = {}
        for c in api.chunks(task_id):
            if c["state"] == "leased":
                held.setdefault(c["worker"], []).append(c["index"])
        return held

    held = wait_until(leased_to, 20, "3 chunks leased, 2 to one worker",
                      ready=lambda h: sorted(map(len, h.values())) == [1, 2], interval_s=0.02)
    victim = next(wid for wid, chunks in held.items() if len(chunks) == 2)
    leases = {c["lease_id"] for c in api.chunks(task_id) if c["worker"] == victim}

    def victim_progress() -> int:
        """Progress reports of the victim's chunks seen by the core: from the journal, which
        is written every turn (session logs are flushed only once a second)."""
        sessions: set[str] = set()
        seen = 0
        for seg in (coord.data_dir / "journal").glob("*.tnj"):
            for record in read_segment(seg):
                event = getattr(record, "event", None)
                if isinstance(event, SessionHello) and event.worker_id == victim:
                    sessions.add(event.session_id)
                elif isinstance(event, ProgressIn) and event.session_id in sessions:
                    seen += event.lease_id in leases
        return seen

    wait_until(victim_progress, 20, f"{victim} to report progress (mid-chunk)",
               interval_s=0.02)
    workers[victim].kill()
    survivor = next(w for wid, w in workers.items() if wid != victim)
    _finish(coord, task_id, [survivor])
    facts.update(task_id=task_id, killed_worker=victim, killed_chunks=held[victim],
                 session_worker=victim)
    return list(workers.values())


def _coordinator_crash(cluster: Cluster, coord: Coordinator,
                       facts: dict[str, Any]) -> list[Worker]:
    workers = [cluster.worker(coord, wid, slots=2, wait=False) for wid in ("gc1", "gc2")]
    for worker in workers:
        worker.wait_connected()
    api = coord.api()
    task_id = _submit(coord, COORDINATOR_CRASH)
    wait_until(lambda: api.task(task_id), 30, "some chunks done while others run",
               ready=lambda i: i["chunks_done"] >= 3 and i["chunks_leased"] > 0,
               interval_s=0.02, watch=tuple(workers))
    api.results(task_id, partial=True)  # waits until what is done so far is durable
    coord.kill()
    coord.restart()
    for worker in workers:
        worker.wait_connected(times=2, timeout_s=30)
    _finish(coord, task_id, workers)
    facts.update(task_id=task_id, session_worker="gc1")
    return workers


NORMAL = Scenario(
    "normal", "one worker (2 slots) runs a priced task of 4 chunks to completion",
    _code(0.05), list(range(16)), {"chunk_size": 4, "price_per_chunk": 100, "budget": 400},
    _normal)
WORKER_KILLED = Scenario(
    "worker_killed", "a worker holding 2 of 3 chunks is killed with SIGKILL mid-chunk; the "
    "other worker finishes them", _code(0.2), list(range(12)), {"chunk_size": 4}, _worker_killed)
COORDINATOR_CRASH = Scenario(
    "coordinator_crash", "the coordinator is killed with SIGKILL mid-task and restarted; two "
    "workers reconnect and finish (one journal segment per boot)",
    _code(0.075), list(range(60)), {"chunk_size": 4}, _coordinator_crash)
SCENARIOS = {s.name: s for s in (NORMAL, WORKER_KILLED, COORDINATOR_CRASH)}


def record(sc: Scenario, out: Path, work: Path) -> Recording:
    """Run one scenario under ``work`` and copy its recordings into ``out`` (replaced)."""
    cluster = Cluster(work / sc.name)
    facts: dict[str, Any] = {}
    try:
        coord = cluster.coordinator(SETTINGS)
        sc.run(cluster, coord, facts)
    finally:
        cluster.close()  # workers first (their sessions end), then the coordinator
    rec = Recording(out, coord.data_dir, dict(coord.tokens), facts)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for n, seg in enumerate(segments(coord.data_dir / "journal"), 1):
        header = next(iter(read_segment(seg)))
        assert isinstance(header, Header)
        shutil.copyfile(seg, out / f"seg{n}-e{header.epoch}.tnj")
    # the worker's last session: after a coordinator crash, the one that finished the task
    # (a killed boot's log lacks what it had not yet handed to its writer, up to a second)
    logs = sorted((coord.data_dir / "sessions").glob(f"*-worker-{facts['session_worker']}.jsonl"),
                  key=lambda p: (p.stat().st_mtime, p.name))
    assert logs[-1].stat().st_size > 0, f"{logs[-1]} is empty"
    shutil.copyfile(logs[-1], out / f"session-{facts['session_worker']}.jsonl")
    (out / "scenario.json").write_text(json.dumps({
        "scenario": sc.name, "about": sc.about, "recorded": time.strftime("%Y-%m-%d"),
        "settings": SETTINGS, "task": {"code": sc.code, "items": sc.items, "spec": sc.spec},
        "facts": facts,
    }, indent=2) + "\n")
    check(rec)
    return rec


def secrets_in(paths: list[Path], tokens: dict[str, str]) -> list[str]:
    """Which files hold any of the tokens (as they are, or as bytes of any text file)."""
    found = []
    for path in paths:
        data = path.read_bytes()
        found += [f"{path.name} holds the {name}" for name, token in tokens.items()
                  if token.encode() in data]
    return found


def check(rec: Recording) -> None:
    recorded = [p for p in rec.data_dir.glob("journal/*") if p.is_file()]
    recorded += [p for p in rec.data_dir.glob("sessions/*") if p.is_file()]
    copied = [p for p in rec.out.iterdir() if p.is_file()]
    leaks = secrets_in(recorded + copied, rec.tokens)
    if leaks:
        shutil.rmtree(rec.out)
        raise SystemExit(f"tokens reached the recordings, nothing kept: {leaks}")
    size = sum(p.stat().st_size for p in copied)
    if size > SIZE_MAX:
        raise SystemExit(f"{rec.out} is {size} bytes, over {SIZE_MAX}: make the task smaller")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="record_golden", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"which to record (default: all of {', '.join(SCENARIOS)})")
    p.add_argument("--out", type=Path, default=GOLDEN, help="where (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the runs' data directories")
    p.add_argument("--work", type=Path, default=None,
                   help="where the runs' data directories go (default: a temporary directory)")
    args = p.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"no scenario {', '.join(sorted(unknown))}; there are {', '.join(SCENARIOS)}")
    work = Path(tempfile.mkdtemp(prefix="tn-golden-", dir=args.work))
    try:
        for name in args.scenarios or list(SCENARIOS):
            rec = record(SCENARIOS[name], args.out / name, work)
            files = sorted(rec.out.iterdir())
            size = sum(f.stat().st_size for f in files)
            print(f"{name}: {', '.join(f.name for f in files)} ({size} bytes) in {rec.out}")
    finally:
        if args.keep:
            print(f"kept the runs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
