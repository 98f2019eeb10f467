"""The worker protocol spoken by hand over a raw WebSocket (MessagePack Structs of schema/).

The module's coordinator has long silence limits (raw sessions here never heartbeat unless a
test says so) and a long disconnect grace, so a lease survives a quick reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from schema import worker as w
from tests.e2e.harness import HEARTBEAT_MS, LEASE_MS, Cluster, Coordinator
from tests.e2e.rest import Api
from tests.e2e.wire import ENC, items_of, output, session

CLOSE_POLICY = 1008
CLOSE_SILENT = 4001
BAD_MESSAGES_MAX = 10  # the coordinator's default TN_BAD_MESSAGES_MAX
DOUBLE = "def process(item):\n    return item * 2\n"


@pytest.fixture(scope="module")
def coord(module_cluster: Cluster) -> Coordinator:
    return module_cluster.coordinator({
        "TN_HEARTBEAT_MS": "5000", "TN_LEASE_MS": "60000",
        "TN_DISCONNECT_GRACE_MS": "10000", "TN_TICK_MS": "100",
    })


@pytest.fixture
def api(coord: Coordinator) -> Iterator[Api]:
    """The customer's API; tasks a test leaves running are cancelled so no later raw session
    receives their chunks."""
    customer = coord.api()
    yield customer
    for task in customer.tasks():
        if task["state"] == "running":
            assert customer.cancel(task["id"]).status == 200


async def test_malformed_frames_get_errors_and_the_session_survives(
    coord: Coordinator, api: Api
) -> None:
    async with session(coord, "survivor") as peer:
        bad_frames = [
            b"\xc1",  # not MessagePack at all
            ENC.encode({"type": "bogus"}),  # an unknown message type
            ENC.encode({"type": "result", "lease_id": -5, "output": [1]}),  # a bad field
            ENC.encode(w.Hello("survivor", coord.worker_token)),  # hello again
        ]
        for frame in bad_frames:
            await peer.send_raw(frame)
            err = await peer.expect(w.Error)
            assert not err.fatal and err.reason, err
        await peer.send(w.Heartbeat())

        created = api.submit(DOUBLE, [1, 2, 3], {"chunk_size": 3})
        assign = await peer.expect(w.Assign)
        assert (assign.task_id, assign.chunk_index) == (created["id"], 0)
        assert items_of(assign) == [1, 2, 3]
        await peer.send(w.Progress(assign.lease_id, 1, 3))
        await peer.send(w.Result(assign.lease_id, output([2, 4, 6])))
        accepted = await peer.expect(w.Accepted)
        assert accepted.lease_id == assign.lease_id
    assert api.wait_state(created["id"])["state"] == "completed"
    assert api.results(created["id"]) == [2, 4, 6]


async def test_text_frame_gets_an_error_and_the_session_survives(
    coord: Coordinator, api: Api
) -> None:
    async with session(coord, "texter") as peer:
        await peer.send_raw('{"type": "heartbeat"}')
        err = await peer.expect(w.Error)
        assert not err.fatal and "binary" in err.reason, err
        created = api.submit(DOUBLE, [5], {"chunk_size": 1})
        assign = await peer.expect(w.Assign)
        assert assign.task_id == created["id"]


REFUSED_FIRST = {
    "heartbeat-first": lambda c: ENC.encode(w.Heartbeat()),
    "text-first": lambda c: ENC.encode(w.Hello("x", c.worker_token)).decode("latin-1"),
    "garbage-first": lambda c: b"\xc1\xc1",
    "bad-token": lambda c: ENC.encode(w.Hello("x", "tn_not-a-token")),
    "customer-token": lambda c: ENC.encode(w.Hello("x", c.customer_token)),
    "wrong-protocol": lambda c: ENC.encode(w.Hello("x", c.worker_token, protocol=99)),
}


@pytest.mark.parametrize("case", list(REFUSED_FIRST))
async def test_refused_hello_is_fatal_and_closes_1008(coord: Coordinator, case: str) -> None:
    async with session(coord) as peer:
        await peer.send_raw(REFUSED_FIRST[case](coord))
        code, got = await peer.until_closed()
    assert code == CLOSE_POLICY, (code, got)
    assert len(got) == 1 and isinstance(got[0], w.Error) and got[0].fatal, got
    if case == "customer-token":
        assert "customer token cannot take work" in got[0].reason


async def test_too_many_malformed_frames_close_1008(coord: Coordinator) -> None:
    async with session(coord, "garbler") as peer:
        for _ in range(BAD_MESSAGES_MAX):
            await peer.send_raw(b"\xc1")
        code, got = await peer.until_closed()
    assert code == CLOSE_POLICY, (code, got)
    assert all(isinstance(m, w.Error) for m in got), got
    assert [m.fatal for m in got] == [False] * (BAD_MESSAGES_MAX - 1) + [True]


async def test_result_for_an_unknown_lease_is_rejected(coord: Coordinator, api: Api) -> None:
    async with session(coord, "inventor") as peer:
        await peer.send(w.Result(987_654_321, output([1])))
        rejected = await peer.expect(w.Rejected)
        assert rejected.lease_id == 987_654_321 and rejected.reason
        await peer.send(w.Fail(987_654_322, "boom"))
        assert (await peer.expect(w.Rejected)).lease_id == 987_654_322


async def test_result_for_another_sessions_lease_is_rejected(
    coord: Coordinator, api: Api
) -> None:
    async with session(coord, "fence-a") as a:
        created = api.submit(DOUBLE, [1, 2, 3], {"chunk_size": 3})
        task_id = created["id"]
        assign = await a.expect(w.Assign)
        lease = assign.lease_id
        async with session(coord, "fence-b") as b:
            await b.send(w.Result(lease, output([666, 666, 666])))
            rejected = await b.expect(w.Rejected)
            assert rejected.lease_id == lease and "another session" in rejected.reason
            await b.send(w.Fail(lease, "zombie says it failed", retryable=False))
            assert (await b.expect(w.Rejected)).lease_id == lease

            chunk = api.chunks(task_id)[0]
            assert (chunk["state"], chunk["worker"], chunk["lease_id"]) == (
                "leased", "fence-a", lease)
            assert api.task(task_id)["chunks_done"] == 0
            assert api.results(task_id, partial=True) == [None, None, None]

            await a.send(w.Result(lease, output([2, 4, 6])))
            assert (await a.expect(w.Accepted)).lease_id == lease
            await b.send(w.Result(lease, output([666, 666, 666])))  # still not B's
            assert (await b.expect(w.Rejected)).lease_id == lease
            await a.send(w.Result(lease, output([2, 4, 6])))  # a re-send is idempotent
            assert (await a.expect(w.Accepted)).lease_id == lease

    assert api.wait_state(task_id)["state"] == "completed"
    assert api.results(task_id) == [2, 4, 6]
    assert api.chunks(task_id)[0]["worker"] == "fence-a"


async def test_reconnect_resumes_held_lease(coord: Coordinator, api: Api) -> None:
    async with session(coord, "resumer") as first:
        created = api.submit(DOUBLE, [7, 8], {"chunk_size": 2})
        lease = (await first.expect(w.Assign)).lease_id
    # another worker cannot claim it
    async with session(coord, "claimer", held_leases=[lease]) as other:
        assert other.welcome is not None
        assert (other.welcome.resumed, other.welcome.dropped) == ([], [lease])
    async with session(coord, "resumer", held_leases=[lease]) as again:
        assert again.welcome is not None and again.welcome.resumed == [lease]
        await again.send(w.Result(lease, output([14, 16])))
        assert (await again.expect(w.Accepted)).lease_id == lease
    assert api.wait_state(created["id"])["state"] == "completed"
    assert api.results(created["id"]) == [14, 16]


async def test_silent_session_is_closed_and_its_lease_requeued(coordinator: Coordinator) -> None:
    """FAST_ENV clocks: a session silent for TN_LEASE_MS is closed (4001) and its chunk goes to
    a session that keeps heartbeating, even one that sent a malformed frame."""
    api = coordinator.api()
    async with session(coordinator, "silent") as silent:
        created = api.submit(DOUBLE, [1, 2], {"chunk_size": 2})
        lease = (await silent.expect(w.Assign)).lease_id
        async with session(coordinator, "beating") as beating:
            await beating.send_raw(b"\xc1")
            assert not (await beating.expect(w.Error)).fatal

            async def heartbeats() -> None:
                while True:
                    await beating.send(w.Heartbeat())
                    await asyncio.sleep(HEARTBEAT_MS / 1000)  # the protocol's period

            beat = asyncio.create_task(heartbeats())
            try:
                code, got = await silent.until_closed(timeout_s=LEASE_MS / 1000 + 5)
                assert code == CLOSE_SILENT, (code, got)
                assign = await beating.expect(w.Assign, timeout_s=5)
                assert (assign.task_id, assign.chunk_index) == (created["id"], 0)
                assert assign.lease_id != lease
                await beating.send(w.Result(assign.lease_id, output([2, 4])))
                assert (await beating.expect(w.Accepted)).lease_id == assign.lease_id
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
    assert api.results(created["id"]) == [2, 4]
