"""Recording and replay (issue 7): golden journals, divergence reports, ``--explain``, no
secrets in recordings, re-driving a live coordinator, and the simulator catching a planted bug.

The golden journals in golden/ were recorded from real runs (a real coordinator and real
workers) by record_golden.py: a normal task, a worker killed mid-chunk, and a coordinator
killed mid-task and restarted. Each holds the events the core saw, fingerprints of the
effects it produced, and a pickled snapshot of the core per segment.

**Regenerate them with ``make golden`` whenever the core's behaviour changes on purpose**
(the golden tests then report the first divergence) **or its classes change** (they report
that a snapshot cannot be loaded), check that the new behaviour is the one you meant (e.g.
``python -m coordinator.replay tests/replay/golden/normal --explain TASK:0``) and commit the
new goldens with the change.

That the simulator is deterministic (the same seed gives the same effects digest, also under
other hash seeds) is checked in tests/sim/test_sim.py; here a seeded run is recorded through
the real Journal and must replay identically.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coordinator import redrive, replay
from coordinator.core import treasury
from coordinator.core.core import Core
from coordinator.core.events import Event, ResultIn
from coordinator.recorder import Entry, Header, Journal, Record, read_segment
from schema import worker as w
from tests.e2e.harness import Cluster, Coordinator
from tests.replay import record_golden
from tests.sim.sim import Build, Params, Sim, SimFailure

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = list(record_golden.SCENARIOS)
REGENERATE = ("If the core changed on purpose, regenerate the golden journals with "
              "`make golden` (tests/replay/record_golden.py) and commit them.")
SIM_DEFAULT_SEEDS = 200  # tests/sim's default seed count


def golden(name: str) -> Path:
    path = GOLDEN / name
    if not any(path.glob("*.tnj")):
        pytest.fail(f"no golden journal in {path}: run `make golden`")
    return path


def replayed(path: Path, **kw: Any) -> replay.Report:
    try:
        return replay.replay(path, **kw)
    except replay.IncompatibleRecording as exc:
        pytest.fail(f"{exc}\n{REGENERATE}")


def entries(seg: Path) -> list[Entry]:
    return [r for r in read_segment(seg) if isinstance(r, Entry)]


def first_effect(seg: Path, fx: str) -> tuple[Entry, int, dict[str, Any]]:
    """The first recorded effect of kind ``fx``: its entry, index and fingerprint."""
    for entry in entries(seg):
        for i, effect in enumerate(entry.effects):
            if effect["fx"] == fx:
                return entry, i, effect
    raise AssertionError(f"no {fx} effect in {seg}")


def scenario(name: str) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads((golden(name) / "scenario.json").read_text())
    return facts


# ---- the golden journals replay identically ---------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_journal_replays_identically(name: str, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    report = replayed(golden(name))
    assert report.divergence is None, f"{report.divergence}\n{REGENERATE}"
    assert report.events > 0 and report.effects > 0
    assert replay.main([str(golden(name))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("identical: ") and report.digest in out


def test_golden_journals_show_their_scenarios() -> None:
    """Guards a regeneration that went wrong: each golden holds what its scenario is about."""
    def kinds(name: str) -> list[str]:
        return [e["fx"] if e["fx"] != "send" else e["message"]["type"]
                for seg in sorted(golden(name).glob("*.tnj")) for x in entries(seg)
                for e in x.effects]

    normal = scenario("normal")
    chunks = -(-len(normal["task"]["items"]) // normal["task"]["spec"]["chunk_size"])
    assert kinds("normal").count("p_result") == chunks
    assert kinds("normal").count("p_transfer") >= chunks  # funding, payouts
    killed = scenario("worker_killed")["facts"]
    assigned = kinds("worker_killed").count("assign")
    assert assigned >= 3 + len(killed["killed_chunks"]), "the killed chunks were re-leased"
    assert kinds("worker_killed").count("p_result") == 3


def test_crash_golden_has_one_segment_per_boot_each_replaying_alone() -> None:
    segs = replay.segments(golden("coordinator_crash"))
    assert len(segs) == 2, segs
    epochs = []
    for seg in segs:
        header = next(iter(read_segment(seg)))
        assert isinstance(header, Header)
        epochs.append(header.epoch)
        report = replayed(seg)
        assert report.divergence is None, f"{report.divergence}\n{REGENERATE}"
        assert report.segments == 1 and report.events > 0
    assert epochs[0] < epochs[1]
    # the second boot starts from the restored state: the task is there, partly done
    header = next(iter(read_segment(segs[1])))
    assert isinstance(header, Header)
    second = replay.load_snapshot(segs[1], header)
    (task,) = second.tasks.values()
    assert 0 < task.done < task.chunks_total


def test_until_and_session_select_part_of_the_journal() -> None:
    seg = next(golden("normal").glob("*.tnj"))
    all_events = entries(seg)
    middle = all_events[len(all_events) // 2].event.at_ms
    part = replayed(seg, until_ms=middle)
    assert part.divergence is None and 0 < part.events < len(all_events)
    session = next(e.event.session_id for e in all_events if hasattr(e.event, "session_id"))
    listed = replayed(seg, session=session).lines
    assert any(f"hello(session_id='{session}'" in line for line in listed)
    assert sum(f"result(session_id='{session}'" in line for line in listed) == sum(
        isinstance(e.event, ResultIn) and e.event.session_id == session for e in all_events)


# ---- a different core is caught, precisely -------------------------------------------------


def test_altered_fee_split_reports_the_first_divergent_effect(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seg = next(golden("normal").glob("*.tnj"))
    entry, index, _ = first_effect(seg, "p_transfer")
    while entry.effects[index].get("kind") != "payout":  # funding does not split fees
        later = [x for x in entries(seg) if x.event.eid > entry.event.eid]
        entry, index = next((x, i) for x in later for i, e in enumerate(x.effects)
                            if e["fx"] == "p_transfer")
    real = treasury.fee_split
    monkeypatch.setattr(treasury, "fee_split", lambda price, bps: (
        real(price, bps)[0] + 1, real(price, bps)[1] - 1))

    report = replay.replay(seg)
    assert report.divergence is not None
    head, recorded, replayed_line = report.divergence.splitlines()[:3]
    assert f"at event #{entry.event.eid} at {entry.event.at_ms} result(" in head
    assert recorded.startswith(f"  effect #{index}: recorded {{'fx': 'p_transfer'")
    assert replayed_line.startswith(f"  effect #{index}: replayed {{'fx': 'p_transfer'")
    assert f"caused by event #{entry.event.eid}" in report.divergence
    lease = entry.effects[index]["lease_id"]  # the chain shows where the lease was granted
    assert re.search(rf"-> {{'fx': 'assign', [^\n]*'lease_id': {lease}", report.divergence)

    assert replay.main([str(seg)]) == 1
    assert "DIVERGED" in capsys.readouterr().out


def rewrite(src: Path, dst: Path, change: Callable[[Entry], Entry]) -> None:
    with open(dst, "wb") as f:
        for record in read_segment(src):
            rec: Record = change(record) if isinstance(record, Entry) else record
            body = msgspec.msgpack.encode(rec)
            f.write(len(body).to_bytes(4, "big") + body)


def test_flipped_recorded_effect_is_named(tmp_path: Path) -> None:
    seg = next(golden("normal").glob("*.tnj"))
    target, index, accepted = next(
        (x, i, e) for x in entries(seg) for i, e in enumerate(x.effects)
        if e["fx"] == "send" and e["message"]["type"] == "accepted")

    def flip(entry: Entry) -> Entry:
        if entry.event.eid != target.event.eid:
            return entry
        effects = [dict(e) for e in entry.effects]
        effects[index] = {**accepted, "message": {**accepted["message"], "credited": 12345}}
        return msgspec.structs.replace(entry, effects=effects)

    altered = tmp_path / "altered.tnj"
    rewrite(seg, altered, flip)
    report = replay.replay(altered)
    assert report.divergence is not None
    assert f"at event #{target.event.eid} " in report.divergence
    assert f"effect #{index}: recorded" in report.divergence
    assert "'credited': 12345" in report.divergence
    assert f"'credited': {accepted['message']['credited']}" in report.divergence


def test_changed_core_classes_tell_the_developer_to_make_golden(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = golden("normal")
    from coordinator.core import scheduling
    monkeypatch.delattr(scheduling, "Scheduler")  # as if the class were renamed
    with pytest.raises(pytest.fail.Exception, match="make golden"):
        replayed(path)
    assert replay.main([str(path)]) == 2
    assert "cannot replay" in capsys.readouterr().err
    monkeypatch.undo()

    real_init = Core.__init__

    def grown(self: Core, *args: Any) -> None:
        real_init(self, *args)
        self.new_table = {}  # type: ignore[attr-defined]

    monkeypatch.setattr(Core, "__init__", grown)
    with pytest.raises(pytest.fail.Exception, match=r"Core\.new_table(.|\n)*make golden"):
        replayed(path)


# ---- --explain ------------------------------------------------------------------------------


def test_explain_tells_the_story_of_a_lease_and_of_a_chunk(
    capsys: pytest.CaptureFixture[str]
) -> None:
    path = golden("normal")
    _, _, assign = first_effect(next(path.glob("*.tnj")), "assign")
    lease, chunk = assign["lease_id"], f"{assign['task_id']}:{assign['chunk_index']}"
    for target in (str(lease), chunk):
        assert replay.main([str(path), "--explain", target]) == 0
        story = capsys.readouterr().out
        lines = story.splitlines()
        granted = next(i for i, s in enumerate(lines) if "'fx': 'assign'" in s
                       and f"'lease_id': {lease}" in s)
        result = next(i for i, s in enumerate(lines) if " result(" in s
                      and f"lease_id={lease}" in s)
        stored = next(i for i, s in enumerate(lines) if "'fx': 'p_result'" in s)
        accepted = next(i for i, s in enumerate(lines) if "'type': 'accepted'" in s
                        and f"'lease_id': {lease}" in s)
        assert granted < result < stored < accepted, story
    assert replay.explain(path, "999:0") == ["nothing in the journal mentions 999:0"]


def test_explain_follows_a_killed_workers_chunk_to_its_second_lease() -> None:
    path = golden("worker_killed")
    facts = scenario("worker_killed")["facts"]
    chunk = f"{facts['task_id']}:{facts['killed_chunks'][0]}"
    story = "\n".join(replay.explain(path, chunk))
    leases = set(re.findall(r"'fx': 'assign'.*?'lease_id': (\d+)", story))
    assert len(leases) == 2, story
    lines = story.splitlines()
    killed = next(i for i, s in enumerate(lines) if " closed(" in s)  # the SIGKILL
    assert any(" progress(" in s for s in lines[:killed]), "killed mid-chunk"
    second_grant = max(i for i, s in enumerate(lines) if "'fx': 'assign'" in s)
    assert killed < second_grant
    assert story.count("'type': 'accepted'") == 1


def test_explain_follows_a_chunk_across_the_coordinator_restart() -> None:
    path = golden("coordinator_crash")
    first, _ = replay.segments(path)
    assigned = {e["chunk_index"]: e["lease_id"] for x in entries(first) for e in x.effects
                if e["fx"] == "assign"}
    done = {e["chunk_index"] for x in entries(first) for e in x.effects if e["fx"] == "p_result"}
    chunk = min(set(assigned) - done)  # leased when the coordinator was killed
    task_id = scenario("coordinator_crash")["facts"]["task_id"]
    story = replay.explain(path, f"{task_id}:{chunk}")
    text = "\n".join(story)
    assert story[0] == f"== {first.name}" and "== seg2-" in text, text
    second = story[story.index(next(s for s in story if s.startswith("== seg2-"))):]
    hellos = [s for s in second if " hello(" in s]  # the worker claims its lease again
    assert any(f"held_leases=[{assigned[chunk]}" in s or f", {assigned[chunk]}" in s
               for s in hellos), hellos
    assert any("'type': 'welcome'" in s and "'dropped'" in s for s in second)
    assert sum("'fx': 'assign'" in s for s in second) >= 1  # granted anew in the new epoch
    assert sum("'type': 'accepted'" in s for s in second) == 1


# ---- no secrets ---------------------------------------------------------------------------

TOKEN_SHAPE = re.compile(rb"tn_[A-Za-z0-9_-]{40,}")


def test_recordings_hold_no_tokens(tmp_path: Path) -> None:
    """A fresh small run, recorded like a golden one: none of its tokens reaches the journal
    or the session logs (record_golden checks this too before keeping anything)."""
    rec = record_golden.record(record_golden.NORMAL, tmp_path / "out", tmp_path / "work")
    assert len(rec.tokens) == 3 and all(t.startswith("tn_") for t in rec.tokens.values())
    recorded = [p for sub in ("journal", "sessions") for p in (rec.data_dir / sub).iterdir()]
    assert any(p.suffix == ".tnj" for p in recorded) and any(
        p.suffix == ".jsonl" for p in recorded)
    assert record_golden.secrets_in(recorded, rec.tokens) == []
    for path in recorded:
        assert not TOKEN_SHAPE.search(path.read_bytes()), path
    log = next(p for p in recorded if p.suffix == ".jsonl").read_text()
    assert '"token":"<redacted>"' in log
    report = replayed(rec.data_dir / "journal")
    assert report.divergence is None, report.divergence


def test_golden_files_hold_nothing_shaped_like_a_token() -> None:
    files = [p for name in SCENARIOS for p in golden(name).iterdir()]
    assert files
    for path in files:
        assert not TOKEN_SHAPE.search(path.read_bytes()), path
        assert path.stat().st_size < record_golden.SIZE_MAX


# ---- the simulator ------------------------------------------------------------------------


def test_simulator_finds_a_lease_that_is_not_fenced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: a result on a lease of another session is accepted (fencing disabled)."""
    fenced = Core.owned_lease

    def unfenced(self: Core, session_id: str, lease_id: int, now: int) -> Any:
        lease = self.leases.get(lease_id)
        if lease is not None and session_id in self.sessions:
            self.sessions[session_id].last_seen_ms = now
            return lease  # no check that this session holds it
        return fenced(self, session_id, lease_id, now)

    monkeypatch.setattr(Core, "owned_lease", unfenced)
    for seed in range(SIM_DEFAULT_SEEDS):
        try:
            Sim(seed).run()
        except SimFailure as exc:
            message = str(exc)
            break
    else:
        pytest.fail(f"{SIM_DEFAULT_SEEDS} seeds ran without noticing unfenced leases")
    print(f"\nunfenced leases caught by seed {seed}: {message.splitlines()[0]}")
    assert f"seed {seed} broke" in message and f"TN_SIM_SEED={seed}" in message
    assert "granted" in message or "fencing" in message or "accepted" in message


class RecordedSim(Sim):
    """A simulation whose core's events go through a real Journal, as in the runtime, with
    a new segment per crash (each boot starts from its restored state) and small segments so
    rotation happens too."""

    def __init__(self, seed: int, root: Path, flush_ms: int = 0) -> None:
        super().__init__(seed, Params(chaos_ms=15_000, drain_ms=15_000))
        self.journal = Journal(root, segment_bytes=32_000, bytes_max=1 << 30,
                               flush_ms=flush_ms, wait_for_writer=True)
        self.recorded_core: Core | None = None

    def handle(self, build: Build) -> None:
        if self.core is not self.recorded_core:  # first event of a boot
            self.journal.open_segment(self.core, self.now)
            self.recorded_core = self.core
        seen: list[Event] = []

        def stamped(eid: int, at: int) -> Event:
            seen.append(build(eid, at))
            return seen[0]

        super().handle(stamped)
        self.journal.record(self.core, seen[0], self.uncommitted[-1])
        self.journal.maybe_flush(self.now)  # as the runtime does after each turn

    def run_to_end(self) -> bytes:
        self.run()
        self.journal.close()
        return b"".join(p.read_bytes() for p in replay.segments(self.journal.root))


SIM_SEED = 4  # two coordinator crashes in its chaos phase


@pytest.mark.parametrize("flush_ms", [0, 1000], ids=["every-event", "batched"])
def test_a_simulated_run_recorded_in_a_journal_replays_identically(tmp_path: Path,
                                                                   flush_ms: int) -> None:
    """Flushed after every event, or (as the coordinator does) many events encoded together
    and segments rotated only at a flush: either way each segment replays on its own."""
    sim = RecordedSim(SIM_SEED, tmp_path / "a", flush_ms)
    first = sim.run_to_end()
    second = RecordedSim(SIM_SEED, tmp_path / "b", flush_ms).run_to_end()
    assert first == second, "the same seed must write the same journal"
    assert sim.stats.crashes >= 1
    report = replayed(tmp_path / "a")
    assert report.divergence is None, report.divergence
    assert report.events == sim.stats.steps
    assert report.segments > sim.stats.crashes + 1  # rotated within a boot, too
    for seg in replay.segments(tmp_path / "a"):  # each rotated or rebooted segment alone
        assert replayed(seg).divergence is None


class _DiskFull:
    """A journal file whose writes fail as on a full disk."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None: ...

    def close(self) -> None:
        self.real.close()


class DiskFullSim(RecordedSim):
    """Its journal's disk fills up after 200 events."""

    def handle(self, build: Build) -> None:
        if self.stats.steps == 200:
            self.journal._file = _DiskFull(self.journal._file)
        super().handle(build)


def test_a_failed_journal_write_stops_recording_and_keeps_whole_records(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Disk full: the coordinator goes on (nothing raises), the log says what to do, and the
    segment ends at its last whole record, which replays."""
    sim = DiskFullSim(SIM_SEED, tmp_path)
    sim.run_to_end()
    assert "No space left on device" in caplog.text and "TN_JOURNAL_BYTES_MAX" in caplog.text
    report = replayed(tmp_path)
    assert report.divergence is None, report.divergence
    assert report.events == 200 < sim.stats.steps  # flushed after each event until then


def test_sim_journal_replay_catches_a_changed_core(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    RecordedSim(SIM_SEED, tmp_path).run_to_end()
    from coordinator.core import outcomes
    monkeypatch.setattr(outcomes, "POISON_WORKERS", 1)  # a chunk is poison after one worker
    report = replay.replay(tmp_path)
    assert report.divergence is not None and "DIVERGED" in report.divergence


# ---- re-driving a live coordinator -----------------------------------------------------------


def _session_log(name: str) -> Path:
    return next(golden(name).glob("session-*.jsonl"))


def _live(cluster: Cluster, settings: dict[str, str]) -> Coordinator:
    coord = cluster.coordinator(settings)
    task = scenario("normal")["task"]
    coord.api().submit(task["code"], task["items"], task["spec"])
    return coord


def _redrive(coord: Coordinator, log: Path, capsys: pytest.CaptureFixture[str],
             wait_ms: int = 5000) -> tuple[int, str]:
    code = replay.main([str(log), "--against", coord.ws_url, "--token", coord.worker_token,
                        "--fast", "--wait-ms", str(wait_ms)])
    return code, capsys.readouterr().out


def test_redrive_a_live_coordinator_with_the_golden_worker_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The golden normal-task worker session, re-driven against a new coordinator running the
    same task, gets the same answers; one with another fee gets different credits; a result
    logged only as a digest cannot be re-driven."""
    settings = scenario("normal")["settings"]
    log = _session_log("normal")
    cluster = Cluster(tmp_path / "cluster")
    try:
        same = _live(cluster, settings)
        other_fee = _live(cluster, {**settings, "PLATFORM_FEE_PERCENT": "20"})

        code, out = _redrive(same, log, capsys)
        assert code == 0, out
        assert "identical: " in out and "welcome assign" in out and "accepted" in out

        code, out = _redrive(other_fee, log, capsys)
        assert code == 1, out
        assert "DIFFERENT" in out and "accepted" in out
        assert re.search(r"credited: recorded 90, live 80", out), out

        lines = log.read_text().splitlines()
        last = max(i for i, s in enumerate(lines) if '"type":"result"' in s)
        rec = json.loads(lines[last])
        rec["msg"]["output"]["b64"] = None  # as if over the payload limit
        lines[last] = json.dumps(rec)
        big = tmp_path / "big.jsonl"
        big.write_text("\n".join(lines) + "\n")
        task = scenario("normal")["task"]
        same.api().submit(task["code"], task["items"], task["spec"])
        code, out = _redrive(same, big, capsys, wait_ms=1000)  # an answer will be missing
        assert code == 1, out
        assert f"line {last + 1}: cannot re-drive result of lease {rec['msg']['lease_id']}" in out
    finally:
        cluster.close()


def test_redrive_maps_leases_and_refuses_bad_arguments(tmp_path: Path) -> None:
    log = redrive.load(_session_log("normal"))
    ids = redrive.Ids([r for r in log if not r.inbound])
    assigns = [r.msg for r in log if r.kind == "assign"]
    assert assigns
    for n, a in enumerate(reversed(assigns)):  # live assigns may come in another order
        ids.learn(w.Assign(1000 + n, "t_live", a["chunk_index"], a["code_ref"],
                                   msgspec.Raw(b"\x90")))
    assert {ids.live(a["lease_id"]) for a in assigns} == set(range(1000, 1000 + len(assigns)))
    assert all(ids.recorded_of[ids.live(a["lease_id"])] == a["lease_id"] for a in assigns)
    hello = redrive.inbound(log[0].msg, "tn_live", ids)
    assert isinstance(hello, w.Hello) and hello.token == "tn_live"
    assert redrive.worker_url("ws://127.0.0.1:9") == "ws://127.0.0.1:9/ws/worker"
    with pytest.raises(SystemExit):
        redrive.worker_url("http://127.0.0.1:9")
    with pytest.raises(SystemExit):
        replay.main([str(_session_log("normal"))])  # a session log needs --against
    journal = golden("normal")
    with pytest.raises(SystemExit):
        replay.main([str(journal), "--against", "ws://127.0.0.1:9"])
    copy = tmp_path / "x.jsonl"
    shutil.copyfile(_session_log("normal"), copy)
    copy.write_text(copy.read_text().split("\n", 1)[1])  # no hello first
    with pytest.raises(SystemExit):
        redrive.load(copy)


def test_result_events_keep_their_output_once() -> None:
    """The journal stores a result's output in its event; effects carry only its length."""
    seg = next(golden("normal").glob("*.tnj"))
    results = [x for x in entries(seg) if isinstance(x.event, ResultIn)]
    assert results
    for x in results:
        stored = [e for e in x.effects if e["fx"] == "p_result"]
        assert stored and all(e["output"] == len(x.event.output) for e in stored)
