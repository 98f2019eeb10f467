"""Hostile bytes for every decoder a peer can reach, in process and over a real socket.

In process (hypothesis): the worker message decoder (``coordinator/sessions.py`` DECODER,
schema/worker.py), the live message decoder (``coordinator/live.py``, schema/live.py), the
REST body decoders (``decode_body`` of coordinator/http_wallet.py, the task spec of
coordinator/http_api.py) and the upload parsers (coordinator/uploads.py), fed random bytes
and structurally valid but hostile MessagePack and JSON: wrong tags, missing fields, wrong
types, 64-bit extremes and integers past them, deep nesting, invalid UTF-8. Each may refuse
only with the error its caller handles (``msgspec.DecodeError``, ``ApiError``,
``UploadError``); what it accepts must pass on (``_to_event``, the session log, topic keys).

Over a socket: random frames on ``/ws/worker`` after a valid hello get ``error`` replies (or
``rejected`` for leases that are not the session's) or a policy close (1008, or 1009 for a
frame past twice the size limit), never a server error; results that JSON cannot carry still
download; and a well-behaved ``tn-worker`` in the same coordinator completes its task
meanwhile.

msgspec refuses some input with UnicodeDecodeError (invalid UTF-8 in a string) or
RecursionError (nesting past its depth limit) rather than DecodeError; every reader catches
the three together (``coordinator/parsing.py`` DECODE_ERRORS). Tests at the end keep the
sockets answering such frames with an error, as they once did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from coordinator import live as live_mod
from coordinator import sessions
from coordinator.accounts import Account
from coordinator.config import Config
from coordinator.core.core import Core, CoreConfig
from coordinator.http_api import _parse_spec
from coordinator.http_auth import ApiError
from coordinator.http_wallet import check_amount, decode_body
from coordinator.parsing import DECODE_ERRORS
from coordinator.uploads import UploadError, UploadLimits, parse_code, parse_dataset
from schema import worker as w
from schema.rest import DepositRequest, FundRequest, WithdrawRequest
from tests.e2e.harness import Cluster, Coordinator, Worker
from tests.e2e.rest import Api
from tests.e2e.wire import ENC, Peer, items_of, session
from tests.replay.logline import logged
from tests.security.tenants import unexplained_tracebacks

# SECURITY_FUZZ_EXAMPLES=N runs N examples of every property (CI: the defaults below)
EXAMPLES = os.environ.get("SECURITY_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(EXAMPLES or 1000), deadline=None, derandomize=True,
                database=None, suppress_health_check=list(HealthCheck))
WS_FUZZ = settings(FUZZ, max_examples=int(EXAMPLES or 400))  # a session each

def refusal(call: Any, *expected: type[BaseException]) -> str:
    """Run ``call``: 'ok', or 'refused' (one of ``expected``); anything else raises."""
    try:
        call()
    except expected:
        return "refused"
    return "ok"


# ---- hostile values --------------------------------------------------------------------

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
TAGS = ["hello", "progress", "heartbeat", "result", "fail", "why_idle", "welcome", "assign",
        "accepted", "error", "bogus", "", "HELLO", "result\x00"]
WORKER_FIELDS = ["worker_id", "token", "protocol", "capabilities", "slots", "prefetch",
                 "held_leases", "sandbox", "lease_id", "done", "total", "preview", "leases",
                 "output", "digest", "error", "retryable", "type", "extra"]


def msgpack_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(INT64_MIN, UINT64_MAX),
        st.sampled_from([0, -1, INT64_MIN, UINT64_MAX, 2**63, 2**32, 256]),
        st.floats(), st.text(max_size=20), st.binary(max_size=20),
        st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=8)))
    return st.recursive(scalars, lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.text(max_size=10), c, max_size=4)),
        max_leaves=max_leaves)


def worker_messages() -> st.SearchStrategy[bytes]:
    """MessagePack maps shaped like worker messages, with hostile fields."""
    tag = st.one_of(st.sampled_from(TAGS), st.integers(INT64_MIN, UINT64_MAX), st.none(),
                    st.binary(max_size=4))
    fields = st.dictionaries(st.sampled_from(WORKER_FIELDS), msgpack_values(4), max_size=6)
    return st.builds(lambda t, f: ENC.encode({"type": t, **f}), tag, fields)


def valid_messages() -> st.SearchStrategy[w.WorkerMessage]:
    lease = st.integers(0, UINT64_MAX)
    text = st.text(max_size=50)
    return st.one_of(
        st.builds(w.Progress, lease, st.integers(0, UINT64_MAX), st.integers(0, UINT64_MAX),
                  st.none() | text),
        st.builds(w.Heartbeat, st.lists(lease, max_size=20)),
        st.builds(w.Result, lease, msgpack_values().map(lambda v: msgspec.Raw(ENC.encode(v))),
                  st.text(max_size=128)),
        st.builds(w.Fail, lease, text, st.booleans()),
        st.just(w.WhyIdle()),
        st.builds(w.Hello, st.text(min_size=1, max_size=128), st.text(min_size=1, max_size=30),
                  st.integers(INT64_MIN, UINT64_MAX)),
    )


def mutations(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A frame cut short, with a byte changed, or with bytes spliced in."""
    def mutate(data: bytes, at: int, how: int, junk: bytes) -> bytes:
        at %= max(1, len(data))
        if how == 0:
            return data[:at]
        if how == 1:
            return data[:at] + bytes([(data[at] + 1) % 256 if data else 0]) + data[at + 1:]
        return data[:at] + junk + data[at:]
    return st.builds(mutate, base, st.integers(0, 10_000), st.integers(0, 2),
                      st.binary(min_size=1, max_size=8))


DEEP_RESULT = (b"\x83\xa4type\xa6result\xa8lease_id\x01\xa6output" + b"\x91" * 5000 + b"\xc0")
BAD_UTF8_HELLO = b"\x83\xa4type\xa5hello\xa9worker_id\xa2\xff\xfe\xa5token\xa1t"
HOSTILE_FRAMES = [
    b"", b"\xc1", b"\x80", b"\x81\xa4type\xc0", BAD_UTF8_HELLO, DEEP_RESULT,
    b"\x82\xa4type\xa8progress\xa8lease_id\xcf" + b"\xff" * 8,  # uint64 max, missing fields
    b"\x82\xa4type\xa9heartbeat\xa6leases\xdd\xff\xff\xff\xff",  # a 4-billion-item array
    b"\x81\xa4type\xdb\xff\xff\xff\xff",  # a 4 GiB string, truncated
    b"\xc7\xff\x05" + b"\x00" * 10,  # ext, truncated
]


# ---- in process ------------------------------------------------------------------------


@FUZZ
@given(frame=st.one_of(st.binary(max_size=200), worker_messages(),
                       mutations(worker_messages()), st.sampled_from(HOSTILE_FRAMES),
                       valid_messages().map(ENC.encode)))
@example(frame=DEEP_RESULT)
@example(frame=BAD_UTF8_HELLO)
def test_worker_decoder(frame: bytes) -> None:
    outcome = refusal(lambda: sessions.DECODER.decode(frame), *DECODE_ERRORS)
    assert outcome in ("ok", "refused"), outcome
    if outcome == "ok":  # what the reader does next with it
        msg = sessions.DECODER.decode(frame)
        sessions._to_event(msg, "s1.1")
        line = logged(frame, "msgpack")  # and the session log writer's
        assert line["dir"] == "in" and line["msg"]["type"] == msg.__struct_config__.tag, line
        if isinstance(msg, w.Hello):
            assert line["msg"]["token"] == "<redacted>"


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80),
                        st.floats(allow_nan=False), st.text(max_size=30))
    return st.recursive(scalars, lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.text(max_size=10), c, max_size=4)),
        max_leaves=max_leaves)


def live_texts() -> st.SearchStrategy[str]:
    topic = st.one_of(st.sampled_from(["tasks", "wallet", "workers", "platform", "task:",
                                       "grid:", "task:t_0000000000000000", "tasks:*"]),
                      st.text(max_size=210))
    message = st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(["subscribe", "unsubscribe", "task", "error", ""]),
                           json_values(2))},
        optional={"topics": st.one_of(st.lists(topic, max_size=70), json_values(3)),
                  "extra": json_values(4)})
    deep = st.integers(1, 3000).map(
        lambda n: '{"type": "subscribe", "topics": ["tasks"], "x": ' + "[" * n + "]" * n + "}")
    return st.one_of(message.map(json.dumps), st.text(max_size=100), deep,
                     st.sampled_from(['{"type": "subscribe", "topics": [1e999]}', "[]", "",
                                      '{"type": "subscribe", "topics": ["\\ud800"]}']))


@FUZZ
@given(text=live_texts())
def test_live_decoder(text: str) -> None:
    outcome = refusal(lambda: live_mod.DECODER.decode(text), *DECODE_ERRORS)
    assert outcome in ("ok", "refused"), outcome
    if outcome == "ok":
        msg = live_mod.DECODER.decode(text)
        line = logged(text.encode(), "json")
        assert line["dir"] == "in" and line["msg"]["type"] == msg.__struct_config__.tag, line
        hub = live_mod.Hub(Core(CoreConfig(), 1), Config())
        for role in ("customer", "worker", "admin"):
            account = Account("a_0000000000000001", "x", role)
            for topic in msg.topics:
                key = hub.key_of(account, topic)
                assert key is None or isinstance(key, str)
                if role != "admin":
                    assert key not in ("platform", "tasks:*")


def _request(body: bytes) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers,
                    "query_string": b""}, receive)


def money_texts() -> st.SearchStrategy[bytes]:
    amount = st.one_of(st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=5),
                       st.booleans(), st.none(), json_values(3))
    body = st.fixed_dictionaries({"amount": amount}, optional={
        "idempotency_key": st.one_of(st.text(max_size=250), st.integers()),
        "method": st.one_of(st.sampled_from(["direct", "checkout", "x"]), st.integers()),
        "extra": json_values(3)})
    raw = st.one_of(st.binary(max_size=100), st.sampled_from([
        b'{"amount": 1, "idempotency_key": "\xff"}', b'{"\xff": 1}', b'{"amount": 1e400}',
        b'{"amount": ' + b"9" * 5000 + b"}", b'{"amount": -0}', b'{"amount": 1.0}',
        b"[" * 3000, b'{"amount": 1}' + b" " * 5000]))
    return st.one_of(body.map(lambda d: json.dumps(d).encode()), raw)


@FUZZ
@given(body=money_texts(), kind=st.sampled_from([DepositRequest, WithdrawRequest, FundRequest]))
def test_rest_body_decoder(body: bytes, kind: type[Any]) -> None:
    config = Config()

    def decode() -> Any:
        return anyio.run(decode_body, _request(body), kind)

    outcome = refusal(decode, ApiError)
    assert outcome in ("ok", "refused"), outcome
    if outcome == "ok":
        amount = decode().amount
        if refusal(lambda: check_amount(amount, config), ApiError) == "ok":
            assert type(amount) is int and 1 <= amount <= config.money_amount_max


def spec_texts() -> st.SearchStrategy[str]:
    numbers = st.one_of(st.integers(-(2**80), 2**80), st.floats(allow_nan=False),
                        st.text(max_size=4), st.none())
    spec = st.fixed_dictionaries({}, optional={
        "chunk_size": numbers, "max_concurrency": numbers, "max_attempts": numbers,
        "requirements": st.one_of(st.lists(st.text(max_size=30), max_size=40), numbers),
        "chunk_timeout_ms": numbers, "name": st.text(max_size=260), "budget": numbers,
        "price_per_chunk": numbers, "max_spend_per_minute": numbers, "priority": numbers,
        "verification": st.sampled_from(["none", "spot", "quorum", "x"]),
        "quorum_k": numbers, "quorum_m": numbers, "spot_per_mille": numbers,
        "unknown": json_values(2)})
    return st.one_of(spec.map(json.dumps), st.text(max_size=100),
                     st.integers(1, 3000).map(lambda n: "[" * n))


@FUZZ
@given(raw=spec_texts())
@example(raw='{"requirements": ["mem_gb>=", "=x", ">=1", "a<<b"]}')
def test_task_spec_decoder(raw: str) -> None:
    outcome = refusal(lambda: _parse_spec(raw), ApiError)
    assert outcome in ("ok", "refused"), outcome
    upload = UploadFile(file=io.BytesIO(raw.encode()), filename="spec.json",
                        headers=Headers({}))  # a spec sent as a file: refused too
    assert refusal(lambda: _parse_spec(upload), ApiError) == "refused"


DATA_NAMES = ["d.json", "d.jsonl", "d.csv", "d.tsv", "d", "d.ndjson", "", "d.JSON"]
DATASETS = [
    b"[" * 5000, b"[" + b"[" * 2000 + b"]" * 2000 + b"]", b"[123456789012345678901234567890]",
    b"[-9223372036854775809]", b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}\n", b"\xef\xbb\xbf",
    b"a,b\n\x00,1\n", b'a\n"x\n', b"\xff\xfe\x00a", b"[1e999]", b"[NaN]",
]


@FUZZ
@given(name=st.sampled_from(DATA_NAMES),
       data=st.one_of(st.binary(max_size=300), st.sampled_from(DATASETS),
                      json_values().map(lambda v: json.dumps(v).encode())))
def test_dataset_parser(name: str, data: bytes) -> None:
    limits = UploadLimits(items_max=1000, item_bytes_max=4096)
    assert refusal(lambda: parse_dataset(name, data, limits), UploadError) in ("ok", "refused")


def _zip_mutations() -> st.SearchStrategy[bytes]:
    def make(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in files.items():
                zf.writestr(name, content)
        return buf.getvalue()

    names = st.sampled_from(["main.py", "../x.py", "/abs.py", "a/main.py", "C:x", "a\\b.py",
                             "x\x01.py", "a/../main.py", "MAIN.py", "dir/", "__MACOSX/main.py"])
    files = st.dictionaries(names, st.binary(max_size=50).map(
        lambda b: b"def process(x):\n    return x\n" + b), min_size=1, max_size=4)
    return st.one_of(files.map(make), mutations(files.map(make)))


@FUZZ
@given(name=st.sampled_from(["main.py", "main.zip", "x", "m.PY", "a.ZIP"]),
       code=st.one_of(st.binary(max_size=200), _zip_mutations()))
def test_code_parser(name: str, code: bytes) -> None:
    limits = UploadLimits(code_bytes_max=1 << 16, zip_members_max=8)
    assert refusal(lambda: parse_code(name, code, limits), UploadError) in ("ok", "refused")


# ---- over a real socket ----------------------------------------------------------------

FRAME_BYTES_MAX = 1 << 16  # TN_WS_MESSAGE_BYTES_MAX here: larger frames get an error
ENV = {"TN_HEARTBEAT_MS": "5000", "TN_LEASE_MS": "60000", "TN_DISCONNECT_GRACE_MS": "300",
       "TN_TICK_MS": "100", "TN_WS_MESSAGE_BYTES_MAX": str(FRAME_BYTES_MAX),
       "TN_REST_REQUESTS_PER_S": "0"}
GOOD = "import time\n\ndef process(item):\n    time.sleep(0.1)\n    return item * 2\n"
ECHO = "def process(item):\n    return item\n"
GOOD_ITEMS = list(range(80))  # 4 s of work on 2 slots: it runs while the fuzzing does


@dataclass
class Stage:
    coord: Coordinator
    good_worker: Worker
    customer: Api
    good_task: str  # the well-behaved worker's (it requires good=1)
    victim_task: str  # the fuzzing sessions' (it requires pool=fuzz)


@pytest.fixture(scope="module")
def stage(module_cluster: Cluster) -> Iterator[Stage]:
    coord = module_cluster.coordinator(ENV)
    customer = coord.api()
    victim = customer.submit(ECHO, list(range(400)), {
        "chunk_size": 1, "requirements": ["pool=fuzz"], "max_attempts": 100})["id"]
    good_worker = module_cluster.worker(coord, "good-worker", slots=2,
                                        extra_args=["--capability", "good=1"])
    good = customer.submit(GOOD, GOOD_ITEMS, {"chunk_size": 1, "requirements": ["good=1"]})
    yield Stage(coord, good_worker, customer, good["id"], victim)


@dataclass(frozen=True)
class Op:
    """A frame to send; ``lease`` ops are completed with the lease last assigned."""

    frame: bytes | str = b""
    lease: str = ""  # "result", "progress" or "fail" for the last assigned lease
    output: Any = None
    zeros: int = 0  # a frame of this many zero bytes instead (kept out of reprs)


def hostile_outputs() -> st.SearchStrategy[Any]:
    """Raw MessagePack results for one item: things JSON cannot carry, and odd but fine ones."""
    return st.one_of(
        st.sampled_from([
            b"\x91\xc7\x02\x05ab",  # an extension type
            b"\x91\x81\xc0\x01",  # a map keyed by nil
            b"\x91\x81\x91\x01\x02",  # a map keyed by an array
            b"\x91\xd5\xff\x00\x00",  # a bad timestamp
            b"\x91\xa2\xff\xfe",  # invalid UTF-8
            b"\x91" + b"\x91" * 900 + b"\xc0",  # deep, but within the decoder's depth
            b"\x91\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
            b"\x91\xc4\x03abc",  # bytes
            b"\x92\x01\x02",  # two outputs for one item
            b"\xc0",  # not an array
        ]),
        msgpack_values(4).map(lambda v: ENC.encode([v])))


def ops() -> st.SearchStrategy[list[Op]]:
    op = st.one_of(
        st.binary(max_size=100).map(lambda b: Op(b)),
        worker_messages().map(lambda b: Op(b)),
        mutations(worker_messages()).map(lambda b: Op(b)),
        valid_messages().filter(lambda m: not isinstance(m, w.Hello)).map(
            lambda m: Op(ENC.encode(m))),
        st.text(max_size=50).map(lambda s: Op(s)),
        st.sampled_from([h for h in HOSTILE_FRAMES if h not in (DEEP_RESULT, BAD_UTF8_HELLO)]
                        ).map(lambda b: Op(b)),
        st.just(Op(b"\xc4" + b"\x00" * 3 + b"x" * 10)),
        st.integers(FRAME_BYTES_MAX + 1, FRAME_BYTES_MAX + 1000).map(
            lambda n: Op(zeros=n)),  # over the limit: an error reply
        st.just(Op(zeros=2 * FRAME_BYTES_MAX + 1)),  # over twice the limit: a 1009 close
        hostile_outputs().map(lambda out: Op(lease="result", output=out)),
        st.just(Op(lease="progress")), st.just(Op(lease="fail")),
    )
    return st.lists(op, min_size=1, max_size=12)


_MARKERS = iter(range(UINT64_MAX, 0, -1))  # lease ids no coordinator ever hands out


async def _frames(peer: Peer, barrier: bool = True,
                  timeout_s: float = 5.0) -> tuple[list[Any], int | None]:
    """With ``barrier``: send a result for a lease id no one holds, and return the messages
    up to its ``rejected`` (the coordinator answers a session in order). Without: the
    messages until the coordinator closes. And the close code, if it closed."""
    marker = next(_MARKERS)
    got: list[Any] = []
    try:
        if barrier:
            await peer.send(w.Result(marker, msgspec.Raw(b"\x90")))
        async with asyncio.timeout(timeout_s):
            while True:
                got.append(await peer.recv(timeout_s))
                if isinstance(got[-1], w.Rejected) and got[-1].lease_id == marker:
                    return got[:-1], None
    except ConnectionClosed:
        return got, peer.ws.close_code


def _lease_message(op: Op, lease: int) -> w.WorkerMessage:
    if op.lease == "result":
        return w.Result(lease, msgspec.Raw(op.output))
    if op.lease == "progress":
        return w.Progress(lease, UINT64_MAX, 0, "x")
    return w.Fail(lease, "é" * 8000)


class _Fuzzer:
    """One fuzzing session: sends the script's frames, keeps track of the lease it holds."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.lease: w.Assign | None = None
        self.closed: int | None = None

    async def barrier(self) -> None:
        """Everything the coordinator answers to what was sent so far (or its close)."""
        if self.closed is not None:
            return
        got, self.closed = await _frames(self.peer)
        assert self.closed in (None, 1008, 1009), (self.closed, got)
        unexpected = [m for m in got if not isinstance(
            m, w.Error | w.Rejected | w.Accepted | w.Assign | w.Idle | w.Revoke)]
        assert not unexpected, got
        for msg in got:
            if isinstance(msg, w.Assign):
                self.lease = msg
            elif isinstance(msg, w.Accepted | w.Rejected | w.Revoke) and (
                    self.lease is not None and msg.lease_id == self.lease.lease_id):
                self.lease = None

    async def send(self, frame: bytes | str) -> None:
        if self.closed is None:
            with contextlib.suppress(ConnectionClosed):
                await self.peer.send_raw(frame)

    async def run(self, script: list[Op]) -> None:
        await self.barrier()  # the first assignment comes with the welcome
        for op in script:
            if op.zeros > 2 * FRAME_BYTES_MAX:  # the server closes (1009); anything sent
                await self.send(b"\x00" * op.zeros)  # after it would be answered by a TCP
                got, self.closed = await _frames(self.peer, barrier=False)  # reset: 1006
                assert self.closed == 1009, (self.closed, got)
                return
            if not op.lease:
                await self.send(b"\x00" * op.zeros if op.zeros else op.frame)
                continue
            if self.lease is None:
                continue
            await self.send(ENC.encode(_lease_message(op, self.lease.lease_id)))
            await self.barrier()
        await self.barrier()
        if self.closed is None and self.lease is not None:
            # finish the chunk properly, so the next session gets a fresh one
            lid, items = self.lease.lease_id, items_of(self.lease)
            await self.send(ENC.encode(w.Result(lid, msgspec.Raw(ENC.encode(items)))))
            await self.barrier()


async def _fuzz_session(s: Stage, script: list[Op]) -> None:
    async with session(s.coord, "fuzzer", capabilities=["pool=fuzz"], slots=1) as peer:
        await _Fuzzer(peer).run(script)


@WS_FUZZ
@given(script=ops())
def test_ws_worker_fuzz(stage: Stage, script: list[Op]) -> None:
    asyncio.run(_fuzz_session(stage, script))
    assert stage.coord.alive


def test_ws_fuzz_left_the_coordinator_whole(stage: Stage) -> None:
    s = stage
    # the well-behaved worker finished its task, on its first connection
    s.customer.wait_state(s.good_task, timeout_s=60, watch=(s.coord, s.good_worker))
    assert s.customer.results(s.good_task) == [2 * i for i in GOOD_ITEMS]
    assert s.good_worker.alive and s.good_worker.connections() == 1
    # results the JSON cannot carry still download (as null), and so do the chunk previews
    results = s.customer.results(s.victim_task, partial=True)
    assert len(results) == 400
    done = [c["index"] for c in s.customer.chunks(s.victim_task) if c["state"] == "done"]
    assert done, "no hostile result was accepted: the fuzzing never finished a chunk"
    for index in done[:50]:
        s.customer.ok("GET", f"/api/tasks/{s.victim_task}/chunks/{index}")
    jsonl = s.customer.call("GET", f"/api/tasks/{s.victim_task}/results?format=jsonl"
                                   "&partial=true")
    assert jsonl.status == 200 and len(jsonl.raw.splitlines()) == 400
    unexplained = unexplained_tracebacks(s.coord.log(), [])
    assert not unexplained, "\n\n".join(unexplained[:5])


UNCARRIED = [  # (a one-item result as a worker may send it, what the download shows)
    (b"\x91\xc7\x02\x05ab", None),  # a MessagePack extension type
    (b"\x91\x81\xc0\x01", None),  # a map keyed by nil
    (b"\x91\x81\x91\x01\x02", None),  # a map keyed by an array (does not even decode)
    (b"\x91\xd5\xff\x00\x00", None),  # a malformed timestamp
    (b"\x91\xa2\xff\xfe", None),  # invalid UTF-8
    (b"\x91\xc4\x03abc", "YWJj"),  # bytes: base64, as JSON always had them
    (b"\x91\x81\x01\x02", {"1": 2}),  # an integer key: a string in JSON
    (b"\x91\x07", 7),
]


async def _return_outputs(s: Stage, task_id: str) -> None:
    async with session(s.coord, "uncarried", capabilities=["pool=uncarried"], slots=1) as peer:
        for _ in UNCARRIED:
            assign = await peer.expect(w.Assign)
            assert assign.task_id == task_id
            raw = UNCARRIED[assign.chunk_index][0]
            await peer.send(w.Result(assign.lease_id, msgspec.Raw(raw)))
            assert (await peer.expect(w.Accepted)).lease_id == assign.lease_id


def test_results_json_cannot_carry_read_as_null(stage: Stage) -> None:
    """Regression: the core accepts any MessagePack array of the right length, and such an
    output used to break ``GET .../results`` midway (an exception in the stream) and answer
    500 for the chunk's preview (coordinator/http_api.py ``_outputs``)."""
    s = stage
    task_id = s.customer.submit(ECHO, list(range(len(UNCARRIED))), {
        "chunk_size": 1, "requirements": ["pool=uncarried"]})["id"]
    asyncio.run(_return_outputs(s, task_id))
    want = [shown for _, shown in UNCARRIED]
    assert s.customer.wait_state(task_id)["state"] == "completed"
    assert s.customer.results(task_id) == want
    lines = s.customer.call("GET", f"/api/tasks/{task_id}/results?format=jsonl")
    assert lines.status == 200 and [json.loads(x) for x in lines.raw.splitlines()] == want
    for index, shown in enumerate(want):
        detail = s.customer.ok("GET", f"/api/tasks/{task_id}/chunks/{index}")
        assert json.loads(detail["preview"]) == [shown], detail


# ---- frames that once ended a session with a server error (1011) -----------------------


@pytest.mark.parametrize("frame", [BAD_UTF8_HELLO, DEEP_RESULT], ids=["utf8", "depth"])
def test_worker_reader_answers_undecodable_frames(stage: Stage, frame: bytes) -> None:
    async def run() -> tuple[int | None, list[Any]]:
        async with session(stage.coord, "bug-repro", capabilities=["pool=none"]) as peer:
            await peer.send_raw(frame)
            got, code = await _frames(peer)
            return code, got

    code, got = asyncio.run(run())
    assert code is None and isinstance(got[0], w.Error), (code, got)


def test_live_reader_answers_undecodable_frames(stage: Stage) -> None:
    async def run() -> list[Any]:
        headers = {"Authorization": f"Bearer {stage.coord.customer_token}"}
        async with connect(stage.coord.ws_url + "/ws/live", additional_headers=headers,
                           compression=None) as ws:
            await ws.send('{"type": "subscribe", "topics": ["tasks"], "x": '
                          + "[" * 5000 + "]" * 5000 + "}")
            async with asyncio.timeout(5):
                frame = await ws.recv()
            return [json.loads(frame)]

    got = asyncio.run(run())
    assert got[0]["type"] == "error", got
