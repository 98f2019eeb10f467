"""Session logs (issue 7): the writer's lines, the helper process that writes them, its limits
and failures, and real worker and dashboard sessions logged by a real coordinator, also one
killed outright."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from websockets.asyncio.client import connect

from coordinator import redrive, sessionlogs
from coordinator.sessionlog_writer import Writer, trim_session_logs
from coordinator.sessionlogs import (
    CLOSE,
    DROPPED,
    IN,
    OPEN,
    OUT,
    SessionLogs,
    open_meta,
    record,
)
from schema import worker as w
from tests.e2e.harness import FAST_ENV, Cluster
from tests.e2e.waiting import wait_until

ENC = msgspec.msgpack.Encoder()
HELLO = w.Hello("w-1", "tn_secret_token_value", 1, ["gpu"], 2)
SMALL, BIG = ENC.encode([1, 2]), ENC.encode(list(range(100)))


def lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "a torn last line"
    return [json.loads(line) for line in text.split("\n")[:-1]]


def worker_session() -> bytes:
    """A worker session's records as the coordinator hands them to the writer."""
    assign = w.Assign(7, "t_1", 0, "ref", msgspec.Raw(SMALL))
    big = w.Assign(8, "t_1", 1, "ref", msgspec.Raw(BIG))
    return b"".join([
        record(OPEN, 1, 1000, open_meta("one.jsonl", "msgpack")),
        record(IN, 1, 1000, ENC.encode(HELLO)),
        record(OUT, 1, 1001, ENC.encode(assign)),
        record(OUT, 1, 1002, ENC.encode(big)),
        record(DROPPED, 1, 1003, b"5"),
        record(IN, 1, 1004, b"\xc1"),  # cannot happen (the session decoded it): a note
        record(IN, 1, 1005, ENC.encode(w.Result(7, msgspec.Raw(SMALL), "d"))),
        record(CLOSE, 1, 1006),
    ])


def test_writer_formats_redacts_and_caps_payloads(tmp_path: Path) -> None:
    writer = Writer(tmp_path, 16, 1 << 20)
    data = bytearray(worker_session())
    assert writer.feed(data) == len(data)
    got = lines(tmp_path / "one.jsonl")
    assert [(x["t"], x["dir"]) for x in got] == [
        (0, "in"), (1, "out"), (2, "out"), (3, "note"), (4, "note"), (5, "in")]
    hello = got[0]["msg"]
    assert hello["type"] == "hello" and hello["token"] == "<redacted>"
    assert hello["worker_id"] == "w-1" and hello["capabilities"] == ["gpu"]
    assert got[1]["msg"]["items"] == {"bytes": len(SMALL),
                                      "b64": base64.b64encode(SMALL).decode()}
    assert got[2]["msg"]["items"] == {"bytes": len(BIG), "b64": None,
                                      "sha256": hashlib.sha256(BIG).hexdigest()[:32]}
    assert got[3]["dropped"] == 5 and "TN_SESSION_LOG_BUFFER_BYTES_MAX" in got[3]["why"]
    assert got[4]["unreadable"].startswith("in: ") and got[4]["bytes"] == 1
    assert got[5]["msg"] == {"type": "result", "lease_id": 7, "digest": "d", "output": {
        "bytes": len(SMALL), "b64": base64.b64encode(SMALL).decode()}}
    assert writer.logs == {}  # closed
    logged = redrive.load(tmp_path / "one.jsonl")  # notes are skipped, messages kept
    assert [(x.n, x.kind) for x in logged] == [
        (1, "hello"), (2, "assign"), (3, "assign"), (6, "result")]


def test_writer_takes_records_split_anywhere(tmp_path: Path) -> None:
    """The pipe delivers pieces of any size: a record cut in two waits for its rest."""
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    data = worker_session()
    Writer(whole, 16, 1 << 20).feed(bytearray(data))
    writer, pending = Writer(pieces, 16, 1 << 20), bytearray()
    for at in range(0, len(data), 7):
        pending += data[at:at + 7]
        del pending[:writer.feed(pending)]
    assert pending == b""
    assert (pieces / "one.jsonl").read_bytes() == (whole / "one.jsonl").read_bytes()


def test_writer_formats_dashboard_frames(tmp_path: Path) -> None:
    writer = Writer(tmp_path, 64, 1 << 20)
    big = json.dumps({"type": "chunks", "states": "x" * 100}).encode()
    data = bytearray(b"".join([
        record(OPEN, 3, 0, open_meta("live.jsonl", "json")),
        record(IN, 3, 1, b'{"type": "subscribe",\n "topics": ["tasks"], "Token": "s3cret"}'),
        record(OUT, 3, 2, b'{"type":"wallet","available":5}'),
        record(OUT, 3, 3, big),
    ]))
    writer.feed(data)
    writer.write_out()
    got = lines(tmp_path / "live.jsonl")
    assert got[0]["msg"] == {"type": "subscribe", "topics": ["tasks"], "Token": "<redacted>"}
    assert got[1]["msg"] == {"type": "wallet", "available": 5}
    assert got[2]["msg"] == {"type": "chunks", "bytes": len(big),
                             "sha256": hashlib.sha256(big).hexdigest()[:32]}
    assert b"s3cret" not in (tmp_path / "live.jsonl").read_bytes()


def test_trim_deletes_the_oldest_and_open_sessions_last(tmp_path: Path) -> None:
    for age, name in enumerate(["new", "mid", "old-open", "old"]):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - 100 * age, time.time() - 100 * age))
    trim_session_logs(tmp_path, 250, keep={"old-open.jsonl"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.jsonl", "old-open.jsonl"]
    trim_session_logs(tmp_path, 150, keep={"old-open.jsonl"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-open.jsonl"]


# ---- the helper process -----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        return self.ms


def session_logs(root: Path, buffer_bytes_max: int = 1 << 20) -> tuple[SessionLogs, FakeClock]:
    clock = FakeClock()
    return SessionLogs(root, 4096, 1 << 30, buffer_bytes_max, clock), clock


async def test_the_helper_writes_every_session_in_order(tmp_path: Path) -> None:
    logs, clock = session_logs(tmp_path)
    a = logs.open("s1.1", "worker-a/../x")
    b = logs.open("s1.2", "worker-b")
    for i in range(500):
        clock.ms = 1_000 + i
        a.write(OUT, ENC.encode(w.Accepted(i, i)))
        if i == 250:
            await logs.flush()  # the helper starts and gets the first half
        b.write(IN, ENC.encode(w.Heartbeat([i])))
    a.close()
    await logs.flush()
    helper = logs._helper
    assert helper is not None
    # background work: it yields the CPU to the coordinator and workers at once (it sets
    # that as it starts; a blocking wait is fine here, the helper does not need this loop)
    wait_until(lambda: os.sched_getscheduler(helper.pid), 10, "the helper's SCHED_IDLE",
               ready=lambda policy: policy == os.SCHED_IDLE)
    assert os.getpriority(os.PRIO_PROCESS, helper.pid) == 19
    await logs.aclose()
    assert helper.returncode == 0
    [log_a] = tmp_path.glob("*-s1.1-worker-a_.._x.jsonl")  # no path from a worker's name
    [log_b] = tmp_path.glob("*-s1.2-worker-b.jsonl")
    got_a, got_b = lines(log_a), lines(log_b)
    assert [x["msg"]["lease_id"] for x in got_a] == list(range(500))
    assert [x["t"] for x in got_a] == list(range(500))
    assert [x["msg"]["leases"] for x in got_b] == [[i] for i in range(500)]


async def test_a_dead_helper_stops_the_logs_not_the_coordinator(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logs, _clock = session_logs(tmp_path)
    log = logs.open("s1.1", "worker-a")
    log.write(IN, ENC.encode(HELLO))
    await logs.flush()
    assert logs._helper is not None
    logs._helper.kill()
    await logs._helper.wait()
    for i in range(3):  # the pipe may take a write or two before it breaks
        log.write(OUT, ENC.encode(w.Accepted(i, 0)))
        await logs.flush()
    assert "session logs stop" in caplog.text and "TN_SESSION_LOGS_ENABLED" in caplog.text
    log.write(OUT, ENC.encode(w.Accepted(9, 0)))
    log.close()
    assert logs.buffer == b""  # nothing piles up
    await logs.aclose()


async def test_past_its_buffer_limit_a_log_leaves_messages_out_and_says_so(
        tmp_path: Path) -> None:
    """Also when the session ends before the next hand-over: the note precedes the close."""
    frame = ENC.encode(w.Accepted(1, 0))
    logs, clock = session_logs(tmp_path, 10 * (len(frame) + 17))
    first, second = logs.open("s1.1", "worker-a"), logs.open("s1.2", "worker-b")
    for _ in range(30):
        first.write(OUT, frame)
    clock.ms = 1_100
    first.close()  # over the limit still: its note goes in before its end
    await logs.flush()
    second.write(OUT, frame)  # room again after the hand-over
    second.close()
    await logs.aclose()
    [path] = tmp_path.glob("*-s1.1-*.jsonl")
    got = lines(path)
    kept = sum(1 for x in got if x["dir"] == "out")
    assert 1 <= kept < 30  # (the two opens take room too)
    assert got[-1] == {"t": 100, "dir": "note", "dropped": 30 - kept, "why": got[-1]["why"]}
    [path] = tmp_path.glob("*-s1.2-*.jsonl")
    assert [x["dir"] for x in lines(path)] == ["out"]


async def test_shutdown_stops_a_helper_that_stopped_reading(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessionlogs, "WAIT_EXIT_S", 1.0)
    logs, _clock = session_logs(tmp_path, 64 << 20)
    log = logs.open("s1.1", "worker-a")
    log.write(IN, ENC.encode(HELLO))
    await logs.flush()
    assert logs._helper is not None
    helper = logs._helper
    os.kill(helper.pid, signal.SIGSTOP)  # as if stuck: the pipe fills and stays full
    big = ENC.encode(w.Heartbeat(list(range(1000))))
    for _i in range(4000):  # far more than a pipe holds
        log.write(IN, big)
    started = time.monotonic()
    with anyio.fail_after(10):
        await logs.aclose()
    assert time.monotonic() - started < 3
    assert helper.returncode == -signal.SIGKILL
    assert "did not finish within 1 s" in caplog.text


def test_the_helper_ignores_termination_signals_and_writes_while_fed(tmp_path: Path) -> None:
    """A service manager stopping the whole group must not cost the logs what the helper
    holds; and lines reach their files while input keeps coming (none is left waiting for
    a pause in it)."""
    helper = subprocess.Popen([sys.executable, "-m", "coordinator.sessionlog_writer",
                               str(tmp_path), "4096", str(1 << 30)], stdin=subprocess.PIPE)
    assert helper.stdin is not None
    frame = ENC.encode(w.Accepted(1, 0))
    helper.stdin.write(record(OPEN, 1, 0, open_meta("fed.jsonl", "msgpack")))
    helper.stdin.flush()
    try:  # the file is made on OPEN, once the writer is up (its signals set)
        wait_until(lambda: (tmp_path / "fed.jsonl").exists(), 10, "the writer to start")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            helper.send_signal(sig)
        deadline = time.monotonic() + 5
        while not (tmp_path / "fed.jsonl").stat().st_size:
            assert time.monotonic() < deadline, "nothing written while the input kept coming"
            helper.stdin.write(record(OUT, 1, 1, frame) * 200)
            helper.stdin.flush()
        assert helper.poll() is None
    finally:
        helper.stdin.close()
        assert helper.wait(10) == 0
    assert all(x["msg"]["lease_id"] == 1 for x in lines(tmp_path / "fed.jsonl"))


def test_a_log_that_cannot_be_written_loses_its_lines_not_the_writer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sessions"
    writer = Writer(root, 64, 1 << 20)
    writer.feed(bytearray(record(OPEN, 1, 0, open_meta("a.jsonl", "msgpack"))))
    shutil.rmtree(root)  # the directory is gone (or the disk full)
    frame = ENC.encode(w.Accepted(1, 0))
    for n in range(3):
        writer.feed(bytearray(record(OUT, 1, n, frame)))
        writer.write_out()
    assert capsys.readouterr().err.count("cannot write") == 1  # said once
    root.mkdir()
    writer.feed(bytearray(record(OUT, 1, 5, frame) + record(CLOSE, 1, 6)))
    assert [x["t"] for x in lines(root / "a.jsonl")] == [5]


# ---- a real coordinator -------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


async def _watch_dashboard(url: str, token: str) -> None:
    async with connect(url + "/ws/live", additional_headers={
            "Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": ["tasks", "wallet"]}))
        kinds = {json.loads(await ws.recv())["type"] for _ in range(2)}
        assert kinds == {"task", "wallet"}, kinds


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def test_a_killed_coordinator_still_logs_what_it_handed_over(tmp_path: Path) -> None:
    """Worker and dashboard sessions are logged. With the helper stopped, everything the
    sessions said reaches only the pipe; SIGKILL the coordinator, let the helper go on, and
    it writes all of it, then exits."""
    cluster = Cluster(tmp_path / "cluster")
    try:
        coord = cluster.coordinator(FAST_ENV)
        worker = cluster.worker(coord, "logged", slots=2)
        helper = wait_until(lambda: [
            pid for pid in _children(coord.pid)
            if b"sessionlog_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()],
            10, "the session log writer to start (at the first hand-over)")[0]
        sessions = coord.data_dir / "sessions"
        wait_until(lambda: any(p.stat().st_size for p in sessions.glob("*-worker-logged.jsonl")),
                   10, "the worker's hello to be logged")
        os.kill(helper, signal.SIGSTOP)
        api = coord.api()
        task = api.submit("def process(item):\n    return item + 1\n", list(range(40)),
                          {"chunk_size": 4})
        info = api.wait_state(task["id"], timeout_s=60, watch=(worker,))
        assert info["state"] == "completed", info
        asyncio.run(_watch_dashboard(coord.ws_url, coord.customer_token))
        time.sleep(1.5)  # a hand-over: all of it into the pipe, none of it on disk
        [worker_log] = sessions.glob("*-worker-logged.jsonl")
        assert '"type":"result"' not in worker_log.read_text()
        assert not list(sessions.glob("*-live-*.jsonl"))
        os.kill(coord.pid, signal.SIGKILL)
        os.kill(helper, signal.SIGCONT)
        wait_until(lambda: _gone(helper), 10, "the helper to finish and exit")
        got = lines(worker_log)  # every line whole
        assert got[0]["dir"] == "in" and got[0]["msg"]["type"] == "hello"
        results = [x for x in got if x["dir"] == "in" and x["msg"]["type"] == "result"]
        accepted = [x for x in got if x["dir"] == "out" and x["msg"]["type"] == "accepted"]
        assert len(results) == len(accepted) == 10
        [live_log] = sessions.glob("*-live-demo-customer.jsonl")  # named by the account's name
        live = lines(live_log)
        assert live[0] == {"t": live[0]["t"], "dir": "in", "msg": {
            "type": "subscribe", "topics": ["tasks", "wallet"]}}
        assert {x["msg"]["type"] for x in live if x["dir"] == "out"} >= {"task", "wallet"}
        for path in sessions.iterdir():
            assert coord.worker_token.encode() not in path.read_bytes()
            assert coord.customer_token.encode() not in path.read_bytes()
    finally:
        cluster.close()


def test_logs_off_start_no_helper(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    try:
        coord = cluster.coordinator({**FAST_ENV, "TN_SESSION_LOGS_ENABLED": "false"})
        cluster.worker(coord, "quiet", slots=1)
        time.sleep(1.5)
        assert not any(b"sessionlog_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()
                       for pid in _children(coord.pid))
        assert not (coord.data_dir / "sessions").exists() or not any(
            (coord.data_dir / "sessions").iterdir())
    finally:
        cluster.close()

