"""Re-drive a live coordinator with a recorded worker session, and report where it answers
differently.

    python -m coordinator.replay SESSION_LOG --against ws://HOST:PORT --token T [--speed N|--fast]

SESSION_LOG is a worker session's JSON Lines log from ``<data-dir>/sessions/``. Its inbound
messages are sent again, in order, on a new worker session: the hello with ``--token`` (the
log has it redacted), then heartbeats, progress, results (their outputs decoded from the
log's base64) and fails. Pacing follows the log's ``t`` (ms since the session began),
divided by ``--speed``; ``--fast`` sends without pauses. Either way each message waits (up
to ``--wait-ms``) until the live coordinator has sent as many messages as the recording had
sent before it, so a result never overtakes the assignment it answers.

Ids differ between the recording and the live run: recorded tasks map to live ones in order
of their first assignment (same code first), recorded leases to live ones in order of
assignment per task and chunk, and inbound messages carry the live lease ids. A lease the
live coordinator never granted is sent under its recorded id. The coordinator's answers are
compared with the recorded outbound messages position by position: the type sequence and the
key fields (lease, task and chunk, code, the digest of the items, attempt, credit, reasons),
ignoring session ids, times and deadlines. A result whose output was logged only as a digest
(over the log's payload limit) cannot be re-driven; it is reported and skipped. Exit status:
0 when the answers are the same, 1 otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import hashlib
import json
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from schema import worker as w

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(w.CoordinatorMessage)
_BYTES = (bytes, bytearray, memoryview)
DIFFERENCES_SHOWN = 20


@dataclass(frozen=True)
class Logged:
    n: int  # line number in the log
    t: int  # ms since the session began
    inbound: bool
    msg: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.msg.get("type", "?"))


def load(path: Path) -> list[Logged]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec["dir"] == "note":  # what the log itself missed: nothing to re-drive
                    continue
                out.append(Logged(n, int(rec["t"]), rec["dir"] == "in", dict(rec["msg"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{path}:{n}: not a session log line ({exc})") from None
    if not out or not out[0].inbound or out[0].kind != "hello":
        raise SystemExit(f"{path} is not a worker session log (it must begin with a hello)")
    return out


def payload(value: Any) -> bytes | None:
    """The bytes of a logged items/output field (None: logged as a digest only)."""
    if isinstance(value, str):  # logs written before payloads were capped: plain base64
        return base64.b64decode(value)
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        return base64.b64decode(value["b64"])
    return None


def digest(value: Any) -> str:
    if isinstance(value, _BYTES):
        return hashlib.sha256(value).hexdigest()[:32]
    raw = payload(value)
    if raw is not None:
        return hashlib.sha256(raw).hexdigest()[:32]
    return str(value.get("sha256")) if isinstance(value, dict) else repr(value)


class Ids:
    """Recorded task and lease ids <-> the live coordinator's, learnt from its assigns."""

    def __init__(self, recorded_out: list[Logged]) -> None:
        self.queues: dict[tuple[str, int], deque[int]] = {}
        self.tasks: dict[str, str] = {}  # recorded task -> its code_ref, in order of first assign
        for rec in recorded_out:
            if rec.kind == "assign":
                m = rec.msg
                self.tasks.setdefault(m["task_id"], m.get("code_ref", ""))
                self.queues.setdefault((m["task_id"], m["chunk_index"]), deque()).append(
                    m["lease_id"])
        self.task_of_live: dict[str, str] = {}
        self.live_of: dict[int, int] = {}  # recorded lease -> live lease
        self.recorded_of: dict[int, int] = {}  # live lease -> recorded lease
        self.granted: set[int] = set()  # every lease the live coordinator assigned

    def learn(self, a: w.Assign) -> None:
        self.granted.add(a.lease_id)
        task = self.task_of_live.get(a.task_id)
        if task is None:
            free = [t for t in self.tasks if t not in self.task_of_live.values()]
            same = [t for t in free if self.tasks[t] == a.code_ref]
            if not (same or free):
                return
            task = self.task_of_live[a.task_id] = (same or free)[0]
        queue = self.queues.get((task, a.chunk_index))
        if queue:
            recorded = queue.popleft()
            self.live_of[recorded] = a.lease_id
            self.recorded_of[a.lease_id] = recorded

    def live(self, recorded_lease: Any) -> Any:
        return self.live_of.get(recorded_lease, recorded_lease)

    def recorded(self, live_lease: Any) -> Any:
        """A live lease in the recording's ids; one never granted live was sent as recorded."""
        if live_lease in self.recorded_of:
            return self.recorded_of[live_lease]
        return f"{live_lease} (not in the recording)" if live_lease in self.granted else live_lease


@dataclass
class Run:
    ids: Ids
    ws: ClientConnection
    live: list[dict[str, Any]] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    closed: str | None = None  # how the coordinator ended the session, if it did
    unsent: int = 0  # inbound messages left when the session ended
    missing: int = 0  # recorded answers given up on: later waits do not wait for them again
    keepalive_s: float = 0.5  # half the live heartbeat period, once welcomed
    keepalives: int = 0  # heartbeats of our own, sent while waiting for late answers
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def got(self, msg: w.CoordinatorMessage) -> None:
        if isinstance(msg, w.Assign):
            self.ids.learn(msg)
        elif isinstance(msg, w.Welcome):
            self.keepalive_s = max(msg.heartbeat_ms, 100) / 2000
        self.live.append(msgspec.to_builtins(msg, enc_hook=bytes, builtin_types=_BYTES))
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def end(self, how: str) -> None:
        self.closed = self.closed or how
        self._poke()

    async def until(self, count: int, timeout_s: float) -> None:
        """Wait until the ``count`` answers recorded so far have arrived (less those already
        given up on), the session ended, or ``timeout_s`` passed. The session is kept alive
        meanwhile, as a worker's own heartbeats would."""
        deadline = anyio.current_time() + timeout_s
        while len(self.live) < count - self.missing and self.closed is None:
            left = deadline - anyio.current_time()
            if left <= 0:
                self.missing = count - len(self.live)
                return
            with anyio.move_on_after(min(left, self.keepalive_s)) as scope:
                await self._changed.wait()
            if scope.cancelled_caught and left > self.keepalive_s:
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.send(ENC.encode(w.Heartbeat()))
                    self.keepalives += 1

    async def quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Wait until nothing has arrived for ``quiet_s`` (extra answers show up here)."""
        with anyio.move_on_after(timeout_s):
            while self.closed is None:
                with anyio.move_on_after(quiet_s) as scope:
                    await self._changed.wait()
                if scope.cancelled_caught:
                    return


def inbound(msg: dict[str, Any], token: str, ids: Ids) -> w.WorkerMessage | str:
    """The message to send for a logged one, or why it cannot be re-driven."""
    data = dict(msg)
    kind = data.get("type")
    if kind == "hello":
        data["token"] = token
        data["held_leases"] = [ids.live(x) for x in data.get("held_leases", [])]
    if kind == "heartbeat":
        data["leases"] = [ids.live(x) for x in data.get("leases", [])]
    if "lease_id" in data:
        data["lease_id"] = ids.live(data["lease_id"])
    try:
        if kind == "result":
            raw = payload(data.get("output"))
            if raw is None:
                out = data.get("output") or {}
                return (f"cannot re-drive result of lease {msg.get('lease_id')}: its output "
                        f"({out.get('bytes')} bytes, sha256 {out.get('sha256')}) was logged "
                        "only as a digest (over the session log's payload limit)")
            return w.Result(data["lease_id"], msgspec.Raw(raw), data.get("digest", ""))
        converted: w.WorkerMessage = msgspec.convert(data, w.WorkerMessage)
        return converted
    except (msgspec.ValidationError, KeyError) as exc:
        return f"cannot re-drive {kind}: not a valid worker message ({exc})"


async def _receive(ws: ClientConnection, run: Run) -> None:
    try:
        async for frame in ws:
            if isinstance(frame, bytes):
                run.got(DEC.decode(frame))
    except ConnectionClosed:
        pass
    except msgspec.DecodeError as exc:
        run.end(f"the coordinator sent a message this build cannot decode ({exc})")
        return
    run.end(f"closed by the coordinator (code {ws.close_code}: {ws.close_reason or '-'})")


async def _drive(ws: ClientConnection, log: list[Logged], token: str, speed: float | None,
                 run: Run, wait_s: float) -> None:
    start = anyio.current_time()
    answers_before = 0  # recorded outbound messages before the current line
    left = sum(1 for r in log if r.inbound)
    for rec in log:
        if not rec.inbound:
            answers_before += 1
            continue
        if speed is not None:
            await anyio.sleep_until(start + rec.t / 1000 / speed)
        await run.until(answers_before, wait_s)
        if run.closed is not None:
            run.unsent = left
            return
        msg = inbound(rec.msg, token, run.ids)
        if isinstance(msg, str):
            run.skipped.append(f"line {rec.n}: {msg}")
        else:
            try:
                await ws.send(ENC.encode(msg))
            except ConnectionClosed:
                run.unsent = left
                return
            run.sent[rec.kind] += 1
        left -= 1


async def redrive(log: list[Logged], url: str, token: str, speed: float | None,
                  wait_s: float = 5.0, quiet_s: float = 0.3) -> Run:
    recorded_out = [r for r in log if not r.inbound]
    async with connect(url, compression=None, open_timeout=10, max_size=None) as ws, \
            anyio.create_task_group() as tg:
        run = Run(Ids(recorded_out), ws)
        tg.start_soon(_receive, ws, run)
        await _drive(ws, log, token, speed, run, wait_s)
        await run.until(len(recorded_out), wait_s)
        await run.quiet(quiet_s, wait_s)
        tg.cancel_scope.cancel()
    return run


# ---- comparing --------------------------------------------------------------------------


def _key_fields(m: dict[str, Any], lease: Any, task: Any) -> dict[str, Any]:
    match m.get("type"):
        case "assign":
            return {"lease": lease, "task": task, "chunk": m.get("chunk_index"),
                    "code_ref": m.get("code_ref"), "items": digest(m.get("items")),
                    "attempt": m.get("attempt")}
        case "accepted":
            return {"lease": lease, "credited": m.get("credited")}
        case "rejected" | "revoke":
            return {"lease": lease, "reason": m.get("reason")}
        case "welcome":
            return {"heartbeat_ms": m.get("heartbeat_ms"), "lease_ms": m.get("lease_ms"),
                    "resumed": sorted(m.get("resumed", [])),
                    "dropped": sorted(m.get("dropped", []))}
        case "error":
            return {"reason": m.get("reason"), "fatal": m.get("fatal")}
        case "idle":
            return {"reasons": m.get("reasons")}
    return dict(m)


def recorded_view(m: dict[str, Any]) -> dict[str, Any]:
    return _key_fields(m, m.get("lease_id"), m.get("task_id"))


def live_view(m: dict[str, Any], ids: Ids) -> dict[str, Any]:
    lease, task = m.get("lease_id"), m.get("task_id")
    if lease is not None:
        lease = ids.recorded(lease)
    if task is not None:
        task = ids.task_of_live.get(task, f"{task} (not in the recording)")
    if m.get("type") == "welcome":
        m = {**m, **{k: [ids.recorded(x) for x in m.get(k, [])]
                     for k in ("resumed", "dropped")}}
    if m.get("type") == "idle":  # reasons name tasks: use the recorded ids
        reasons = []
        for reason in m.get("reasons", []):
            for live_id, recorded in ids.task_of_live.items():
                reason = reason.replace(live_id, recorded)
            reasons.append(reason)
        m = {**m, "reasons": reasons}
    return _key_fields(m, lease, task)


def _brief(view: dict[str, Any], kind: str) -> str:
    return f"{kind}(" + ", ".join(f"{k}={v}" for k, v in view.items()) + ")"


def sequence(kinds: list[str]) -> str:
    """``welcome assign x3 accepted``: a type sequence, runs folded."""
    out: list[tuple[str, int]] = []
    for kind in kinds:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + 1)
        else:
            out.append((kind, 1))
    return " ".join(k if n == 1 else f"{k} x{n}" for k, n in out) or "(none)"


def differences(log: list[Logged], run: Run) -> list[str]:
    """The answers that differ: the two type sequences are aligned (a missing or extra
    message shows as such, not as a shift of everything after it), then messages of the
    same type are compared by their key fields."""
    recorded = [r for r in log if not r.inbound]
    kinds = [str(m.get("type")) for m in run.live]
    diffs = []
    matcher = difflib.SequenceMatcher(None, [r.kind for r in recorded], kinds, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        for k in range(max(i2 - i1, j2 - j1)):
            rec = recorded[i1 + k] if i1 + k < i2 else None
            got = run.live[j1 + k] if j1 + k < j2 else None
            where = (f"recorded answer #{i1 + k + 1} (log line {rec.n})" if rec is not None
                     else f"live answer #{j1 + k + 1}")
            want = None if rec is None else recorded_view(rec.msg)
            have = None if got is None else live_view(got, run.ids)
            if rec is None or got is None or op != "equal":
                recorded_text = "nothing" if rec is None else _brief(want or {}, rec.kind)
                live_text = "nothing" if got is None else _brief(have or {}, kinds[j1 + k])
                diffs.append(f"{where}: recorded {recorded_text}; live {live_text}")
            elif want != have:
                assert want is not None and have is not None
                fields = ", ".join(f"{f}: recorded {want.get(f)!r}, live {have.get(f)!r}"
                                   for f in want if want.get(f) != have.get(f))
                diffs.append(f"{where} {rec.kind}: {fields}")
    if run.unsent:
        diffs.append(f"the session ended with {run.unsent} inbound message(s) not sent: "
                     f"{run.closed}")
    return diffs


def report(path: Path, url: str, speed: float | None, log: list[Logged],
           run: Run) -> tuple[bool, list[str]]:
    """The summary to print, and whether the coordinator answered exactly as recorded."""
    recorded_kinds = [r.kind for r in log if not r.inbound]
    live_kinds = [str(m.get("type")) for m in run.live]
    diffs = differences(log, run)
    pace = "fast" if speed is None else f"{speed:g}x recorded speed"
    lines = [
        f"re-drove {path.name} against {url} ({pace})",
        f"  sent {sum(run.sent.values())} of {sum(1 for r in log if r.inbound)} inbound "
        f"messages ({', '.join(f'{k} x{n}' if n > 1 else k for k, n in run.sent.items())}); "
        f"{len(run.skipped)} cannot be re-driven"
        + (f"; {run.keepalives} heartbeat(s) of our own while waiting for late answers"
           if run.keepalives else ""),
        *[f"  {line}" for line in run.skipped],
        f"  recorded answers: {sequence(recorded_kinds)}",
        f"  live answers:     {sequence(live_kinds)}",
    ]
    same = not diffs and not run.skipped
    if same:
        lines.append(f"identical: {len(live_kinds)} answers as recorded")
    else:
        lines.append(f"DIFFERENT: {len(diffs)} difference(s), {len(run.skipped)} message(s) "
                     "not re-driven")
        lines += [f"  {d}" for d in diffs[:DIFFERENCES_SHOWN]]
        if len(diffs) > DIFFERENCES_SHOWN:
            lines.append(f"  ... and {len(diffs) - DIFFERENCES_SHOWN} more")
    return same, lines


def worker_url(against: str) -> str:
    parts = urlsplit(against)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise SystemExit(f"--against {against!r}: give a ws://HOST:PORT (or wss://) address")
    return against if parts.path not in ("", "/") else against.rstrip("/") + "/ws/worker"


def main(path: Path, against: str, token: str | None, speed: float | None,
         wait_ms: int = 5000) -> int:
    token = token or os.environ.get("TN_TOKEN")
    if not token:
        raise SystemExit("re-driving needs a worker token: --token T (or TN_TOKEN)")
    if speed is not None and speed <= 0:
        raise SystemExit("--speed must be above 0")
    url = worker_url(against)
    log = load(path)
    try:
        run = anyio.run(redrive, log, url, token, speed, wait_ms / 1000)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise SystemExit(f"cannot connect to {url}: {exc}") from None
    same, lines = report(path, url, speed, log, run)
    print("\n".join(lines))
    return 0 if same else 1
