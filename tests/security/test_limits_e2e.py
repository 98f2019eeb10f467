"""Rate limits and session caps against real coordinator processes started with tight limits.

REST: 429 with ``Retry-After`` and a body naming the setting, per account (its tokens and
browsers together; per address without valid credentials), and back to 200 after a wait. Worker
sessions over their message rate are read slower and lose nothing; too many sessions per
account, or live sessions, get a 1008 close naming the cap; a live session flooding
subscribes gets an error, then 1008; revoking a token closes what it opened.

Raw sessions here never heartbeat, so the coordinators of those tests have a long silence
limit (``QUIET``). Nothing asserts how long anything took: tests wait on conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from schema import worker as w
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator
from tests.e2e.waiting import wait_until
from tests.e2e.wire import items_of, output, session

CLOSE_POLICY = 1008
QUIET = {"TN_HEARTBEAT_MS": "5000", "TN_LEASE_MS": "60000", "TN_TICK_MS": "100",
         "TN_DISCONNECT_GRACE_MS": "1000"}
REST_TIGHT = {**FAST_ENV, "TN_REST_REQUESTS_PER_S": "1", "TN_REST_REQUESTS_BURST": "20"}
ECHO = "def process(item):\n    return {'n': item, 'square': item * item}\n"
THROTTLED = "sends more than TN_WORKER_MESSAGES_PER_S="  # the coordinator's log line


# ---- REST --------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def error(self) -> str:
        return str(json.loads(self.body)["error"])


def get(coord: Coordinator, path: str, token: str | None = None,
        cookie: str | None = None) -> Reply:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = cookie
    req = urllib.request.Request(coord.url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                         resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def until_refused(call: Callable[[], Reply], tries: int = 200) -> tuple[int, Reply]:
    """Call until a 429: how many were served first, and the refusal."""
    for served in range(tries):
        reply = call()
        if reply.status == 429:
            return served, reply
        assert reply.status == 200, (reply.status, reply.body[:300])
    raise AssertionError(f"no 429 in {tries} requests")


def sign_in(coord: Coordinator, name: str) -> str:
    req = urllib.request.Request(
        coord.url + "/auth/signin", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"name": name, "password": "demo"}).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.headers["Set-Cookie"].split(";", 1)[0])


def test_rest_over_the_rate_gets_429_per_account_and_recovers(cluster: Cluster) -> None:
    coord = cluster.coordinator(REST_TIGHT)
    second = coord.api().ok("POST", "/api/tokens", 201, body=b'{"label": "second"}',
                            content_type="application/json")["token"]
    served, refused = until_refused(lambda: get(coord, "/api/tasks", coord.customer_token))
    assert served >= 19  # the burst, less the request that made the second token
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"] == "application/json"
    assert refused.error.startswith(f"slow down; retry after {refused.headers['retry-after']} s;")
    assert "TN_REST_REQUESTS_PER_S=1" in refused.error
    assert "TN_REST_REQUESTS_BURST=20" in refused.error and refused.error.endswith("per account")
    assert refused.headers["x-content-type-options"] == "nosniff"  # still a normal response
    # another token of the same account buys no fresh budget
    assert get(coord, "/api/tasks", second).status == 429

    # other accounts and anonymous callers have budgets of their own
    assert get(coord, "/api/tasks", coord.admin_token).status == 200
    assert get(coord, "/api/wallet", coord.worker_token).status == 200
    assert get(coord, "/healthz").status == 200

    wait_until(lambda: get(coord, "/api/tasks", coord.customer_token).status, 30,
               "the customer's token to be served again", ready=lambda s: s == 200,
               watch=(coord,))


def test_rest_anonymous_and_made_up_tokens_share_the_address_budget(cluster: Cluster) -> None:
    coord = cluster.coordinator(REST_TIGHT)
    _, refused = until_refused(lambda: get(coord, "/healthz"))
    assert refused.error.endswith("per client address") and "retry-after" in refused.headers
    # inventing tokens buys no fresh budget: they are charged to the address
    served, refused = until_refused(lambda: get(coord, "/api/tasks", "tn_made-up-token"))
    assert served < 10 and refused.error.endswith("per client address")
    # the dashboard's own files are never counted
    assert all(get(coord, "/").status == 200 for _ in range(40))
    assert get(coord, "/api/tasks", coord.customer_token).status == 200


def test_rest_browser_sessions_share_their_account_budget(cluster: Cluster) -> None:
    coord = cluster.coordinator(REST_TIGHT)
    first, second = sign_in(coord, "demo-customer"), sign_in(coord, "demo-customer")
    served, refused = until_refused(lambda: get(coord, "/api/wallet", cookie=first))
    assert served >= 20 and refused.error.endswith("per account")
    served, _ = until_refused(lambda: get(coord, "/api/wallet", cookie=second))
    assert served < 10  # a second sign-in of the same account: the same budget
    assert get(coord, "/api/wallet", cookie=sign_in(coord, "demo-admin")).status == 200
    # the account's tokens share the budget of its browsers
    assert get(coord, "/api/wallet", coord.customer_token).status == 429


# ---- worker sessions: backpressure ---------------------------------------------------------


async def test_worker_flood_is_read_slower_and_nothing_is_lost(cluster: Cluster) -> None:
    coord = cluster.coordinator({**QUIET, "TN_WORKER_MESSAGES_PER_S": "20",
                                 "TN_WORKER_MESSAGES_BURST": "10"})
    api = coord.api()
    async with session(coord, "flooder", slots=5, prefetch=0) as peer:
        created = api.submit(ECHO, list(range(5)), {"chunk_size": 1})
        assigns = [await peer.expect(w.Assign, timeout_s=30) for _ in range(5)]
        for a in assigns:  # 30 progress reports and the result each, as fast as possible
            [item] = items_of(a)
            for done in range(30):
                await peer.send(w.Progress(a.lease_id, done % 2, 1))
            await peer.send(w.Result(a.lease_id, output([{"n": item, "square": item * item}])))
        accepted = {(await peer.expect(w.Accepted, timeout_s=60)).lease_id for _ in assigns}
        assert accepted == {a.lease_id for a in assigns}
        await peer.send(w.WhyIdle())  # the session survived the flood
        assert isinstance(await peer.expect(w.Idle, timeout_s=30), w.Idle)
    info = api.wait_state(created["id"], watch=(coord,))
    assert info["state"] == "completed", info
    assert api.results(created["id"]) == [{"n": i, "square": i * i} for i in range(5)]
    assert THROTTLED + "20" in coord.log()


def test_real_worker_completes_under_a_low_message_rate(cluster: Cluster) -> None:
    coord = cluster.coordinator({**FAST_ENV, "TN_WORKER_MESSAGES_PER_S": "4",
                                 "TN_WORKER_MESSAGES_BURST": "4"})
    worker = cluster.worker(coord, "paced-1", slots=2)
    api = coord.api()
    created = api.submit(ECHO, list(range(12)), {"chunk_size": 1})
    info = api.wait_state(created["id"], timeout_s=120, watch=(coord, worker))
    assert info["state"] == "completed", info
    assert api.results(created["id"]) == [{"n": i, "square": i * i} for i in range(12)]
    assert THROTTLED + "4" in coord.log()
    assert worker.connections() == 1  # slowed down, never dropped


def test_a_worker_over_the_rest_rate_waits_for_the_code_instead_of_failing(
        cluster: Cluster) -> None:
    """The worker's account has spent its REST budget when a task arrives: its code fetch
    gets 429 and waits out Retry-After, and no chunk counts a failed attempt."""
    coord = cluster.coordinator({**FAST_ENV, "TN_REST_REQUESTS_PER_S": "1",
                                 "TN_REST_REQUESTS_BURST": "5"})
    worker = cluster.worker(coord, "rated-1", slots=2)
    api = coord.api()
    until_refused(lambda: get(coord, "/api/wallet", coord.worker_token))
    created = api.submit(ECHO, list(range(4)), {"chunk_size": 1})

    def task() -> Reply:  # the customer's polling has a budget of 1 a second too
        return get(coord, f"/api/tasks/{created['id']}", coord.customer_token)

    done = wait_until(task, 120, "the task to complete", interval_s=1.5, watch=(coord, worker),
                      ready=lambda r: r.status == 200 and json.loads(r.body)["state"] != "running")
    assert json.loads(done.body)["state"] == "completed", done.body
    chunks = wait_until(lambda: get(coord, f"/api/tasks/{created['id']}/chunks",
                                    coord.customer_token), 30, "the chunk list",
                        interval_s=1.5, ready=lambda r: r.status == 200)
    assert [c["attempts"] for c in json.loads(chunks.body)["chunks"]] == [1, 1, 1, 1]


# ---- session caps ------------------------------------------------------------------------


async def test_too_many_worker_sessions_get_1008_and_tn_worker_waits_its_turn(
    cluster: Cluster,
) -> None:
    coord = cluster.coordinator({**QUIET, "TN_WORKER_SESSIONS_PER_ACCOUNT_MAX": "2"})
    async with contextlib.AsyncExitStack() as held:
        for wid in ("cap-1", "cap-2"):
            await held.enter_async_context(session(coord, wid))
        async with session(coord) as third:
            await third.send(w.Hello("cap-3", coord.worker_token))
            code, got = await third.until_closed()
            assert (code, got) == (CLOSE_POLICY, [])  # no fatal error: a retry may succeed
            reason = third.ws.close_reason or ""
            assert "too many worker sessions" in reason
            assert "TN_WORKER_SESSIONS_PER_ACCOUNT_MAX=2" in reason
        async with session(coord, "other-account", token=coord.admin_token) as other:
            assert other.welcome is not None  # the cap is per account

        worker = cluster.worker(coord, "cap-4", wait=False)
        refusal = "the coordinator closed the session: too many worker sessions"
        await asyncio.to_thread(wait_until, lambda: worker.count(refusal), 30,
                                "tn-worker to print the refusal", watch=(worker,))
        assert worker.connections() == 0
    # the raw sessions are gone: tn-worker, still running, gets in after its backoff
    await asyncio.to_thread(worker.wait_connected, 1, 60)
    assert "TN_WORKER_SESSIONS_PER_ACCOUNT_MAX=2" in worker.log()


@contextlib.asynccontextmanager
async def live(coord: Coordinator, token: str) -> AsyncIterator[ClientConnection]:
    async with connect(coord.ws_url + "/ws/live",
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        yield ws


async def subscribe(ws: ClientConnection, topic: str) -> dict[str, Any]:
    """Subscribe to ``wallet`` or ``workers`` and return its snapshot (skipping updates of
    topics subscribed before)."""
    await ws.send(json.dumps({"type": "subscribe", "topics": [topic]}))
    async with asyncio.timeout(10):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] in (topic, "error"):
                return frame


async def until_closed(ws: ClientConnection, timeout_s: float = 15) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout_s):
            while True:
                frames.append(json.loads(await ws.recv()))
    return frames


async def test_too_many_live_sessions_get_an_error_and_1008(cluster: Cluster) -> None:
    coord = cluster.coordinator({**QUIET, "TN_LIVE_SESSIONS_PER_ACCOUNT_MAX": "2"})
    async with live(coord, coord.customer_token) as a, live(coord, coord.customer_token) as b:
        for ws in (a, b):  # answered: both are registered
            assert (await subscribe(ws, "wallet"))["type"] == "wallet"
        async with live(coord, coord.customer_token) as third:
            frames = await until_closed(third)
            assert [f["type"] for f in frames] == ["error"]
            assert "TN_LIVE_SESSIONS_PER_ACCOUNT_MAX=2" in frames[0]["reason"]
            assert third.close_code == CLOSE_POLICY
            assert "too many live sessions" in (third.close_reason or "")
        async with live(coord, coord.admin_token) as other:  # the cap is per account
            assert (await subscribe(other, "wallet"))["type"] == "wallet"
        for ws in (a, b):  # both live on
            assert (await subscribe(ws, "workers"))["type"] == "workers"
    # the sessions are closed: room again
    async def attempt() -> bool:
        async with live(coord, coord.customer_token) as again:
            return (await subscribe(again, "wallet"))["type"] == "wallet"

    await asyncio.to_thread(wait_until, lambda: asyncio.run(attempt()), 30,
                            "the closed live sessions to be released", watch=(coord,))


async def test_live_session_flooding_subscribes_gets_an_error_then_1008(
    cluster: Cluster,
) -> None:
    coord = cluster.coordinator({**QUIET, "TN_LIVE_MESSAGES_PER_S": "1",
                                 "TN_LIVE_MESSAGES_BURST": "3"})
    async with live(coord, coord.customer_token) as ws:
        for _ in range(20):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"type": "subscribe", "topics": ["wallet"]}))
        frames = await until_closed(ws)
        errors = [f for f in frames if f["type"] == "error"]
        assert len(errors) == 1 and frames[-1] == errors[0], frames
        assert "slow down" in errors[0]["reason"]
        assert "TN_LIVE_MESSAGES_PER_S=1" in errors[0]["reason"]
        assert ws.close_code == CLOSE_POLICY and "TN_LIVE_MESSAGES_PER_S" in (
            ws.close_reason or "")
        assert frames[0]["type"] == "wallet"  # served up to the limit
    async with live(coord, coord.customer_token) as fresh:  # the limit is per session
        assert (await subscribe(fresh, "wallet"))["type"] == "wallet"


# ---- revoked tokens ----------------------------------------------------------------------


async def test_revoking_a_token_closes_its_sessions(cluster: Cluster) -> None:
    coord = cluster.coordinator(QUIET)
    worker_api = coord.api(coord.worker_token)
    created = worker_api.ok("POST", "/api/tokens", 201, body=b'{"label": "doomed"}',
                            content_type="application/json")
    doomed = str(created["token"])
    async with session(coord, "doomed-1", token=doomed) as peer, \
            session(coord, "kept-1") as kept, live(coord, doomed) as watcher:
        assert (await subscribe(watcher, "wallet"))["type"] == "wallet"
        worker_api.ok("DELETE", f"/api/tokens/{created['id']}")
        code, _ = await peer.until_closed(timeout_s=15)
        assert code == CLOSE_POLICY
        assert peer.ws.close_reason == "token revoked; get a new token (tn token create)"
        frames = await until_closed(watcher)
        assert frames[-1]["type"] == "error" and "token revoked" in frames[-1]["reason"]
        assert watcher.close_code == CLOSE_POLICY
        await kept.send(w.WhyIdle())  # the account's other token's session lives on
        assert isinstance(await kept.expect(w.Idle, timeout_s=15), w.Idle)
