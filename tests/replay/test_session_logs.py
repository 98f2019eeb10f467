"""Session logs (issue 7): the writer's lines, the helper process that writes them, its limits
and failures, and real worker and dashboard sessions logged by a real coordinator, also one
killed outright."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from coordinator import redrive
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


async def test_the_helper_writes_every_session_in_order(tmp_path: Path) -> None:
    logs = SessionLogs(tmp_path, 4096, 1 << 30, 1 << 20)
    a = logs.open("s1.1", "worker-a/../x", 1_000)
    b = logs.open("s1.2", "worker-b", 1_000)
    for i in range(500):
        a.write(OUT, ENC.encode(w.Accepted(i, i)), 1_000 + i)
        if i == 250:
            await logs.flush()  # the helper starts and gets the first half
        b.write(IN, ENC.encode(w.Heartbeat([i])), 1_000 + i)
    a.close(2_000)
    await logs.flush()
    helper = logs._helper
    assert helper is not None
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
    logs = SessionLogs(tmp_path, 4096, 1 << 30, 1 << 20)
    log = logs.open("s1.1", "worker-a", 0)
    log.write(IN, ENC.encode(HELLO), 0)
    await logs.flush()
    assert logs._helper is not None
    logs._helper.kill()
    await logs._helper.wait()
    for i in range(3):  # the pipe may take a write or two before it breaks
        log.write(OUT, ENC.encode(w.Accepted(i, 0)), i)
        await logs.flush()
    assert "session logs stop" in caplog.text and "TN_SESSION_LOGS_ENABLED" in caplog.text
    log.write(OUT, ENC.encode(w.Accepted(9, 0)), 9)
    log.close(10)
    assert logs.buffer == b""  # nothing piles up
    await logs.aclose()


async def test_past_its_buffer_limit_a_log_leaves_messages_out_and_says_so(
        tmp_path: Path) -> None:
    frame = ENC.encode(w.Accepted(1, 0))
    logs = SessionLogs(tmp_path, 4096, 1 << 30, 10 * (len(frame) + 17))
    log = logs.open("s1.1", "worker-a", 0)
    for i in range(30):
        log.write(OUT, frame, i)
    await logs.flush()
    log.write(OUT, frame, 40)  # room again after the hand-over
    log.close(41)
    await logs.aclose()
    [path] = tmp_path.glob("*.jsonl")
    got = lines(path)
    notes = [x for x in got if x["dir"] == "note"]
    kept = sum(1 for x in got if x["dir"] == "out")
    assert len(notes) == 1 and notes[0]["dropped"] == 30 - (kept - 1) and kept >= 10


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


def test_a_killed_coordinator_still_logs_what_it_handed_over(tmp_path: Path) -> None:
    """Worker and dashboard sessions are logged; SIGKILL the coordinator a second later and
    its helper still writes everything it was handed, then exits."""
    cluster = Cluster(tmp_path / "cluster")
    try:
        coord = cluster.coordinator(FAST_ENV)
        worker = cluster.worker(coord, "logged", slots=2)
        api = coord.api()
        task = api.submit("def process(item):\n    return item + 1\n", list(range(40)),
                          {"chunk_size": 4})
        info = api.wait_state(task["id"], timeout_s=60, watch=(worker,))
        assert info["state"] == "completed", info
        asyncio.run(_watch_dashboard(coord.ws_url, coord.customer_token))
        sessions = coord.data_dir / "sessions"
        wait_until(lambda: any(
            '"type":"accepted"' in p.read_text() for p in sessions.glob("*-worker-logged.jsonl")),
            10, "the worker's log to hold its results")
        [helper] = [pid for pid in _children(coord.pid)
                    if b"sessionlog_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        time.sleep(1.5)  # a flush hands everything over
        os.kill(coord.pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{helper}").exists() or b"Z" in Path(
            f"/proc/{helper}/stat").read_bytes().rsplit(b")", 1)[1][:3], 10,
            "the helper to finish and exit")
        [worker_log] = sessions.glob("*-worker-logged.jsonl")
        got = lines(worker_log)  # every line whole
        assert got[0]["dir"] == "in" and got[0]["msg"]["type"] == "hello"
        results = [x for x in got if x["dir"] == "in" and x["msg"]["type"] == "result"]
        accepted = [x for x in got if x["dir"] == "out" and x["msg"]["type"] == "accepted"]
        assert len(results) == len(accepted) == 10
        [live_log] = sessions.glob("*-live-*.jsonl")
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

