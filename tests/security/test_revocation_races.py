"""Revocation against whatever is opened at the same moment: a dashboard sign-in with the
token, a live socket (bearer token, or the cookie of a browser signed in with it) and a worker
hello. Whatever order the coordinator takes them in, nothing opened with the token may outlive
the revocation: every sign-in is refused (saying the token was revoked) or its cookie stops
working, and every socket is refused or closed (1008).

Sign-ins stream from before a revocation to after it (the token already in the coordinator's
memory: the window is the wait for the write lock). Sockets come in volleys sent with the
revocations of several tokens not yet in memory (the window is the database read of the
check). The rounds make the interleavings likely, not certain: without the fixes each test
failed in every run tried. A socket that survived is one still open after ``CLOSE_WAIT_S``:
nothing asserts how long anything took. The last test is the plain case: revoking a token
closes the live socket of a browser signed in with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from schema import worker as w
from tests.e2e.harness import Cluster, Coordinator
from tests.e2e.rest import Api, Response
from tests.e2e.wire import Peer
from tests.security.test_limits_e2e import QUIET, subscribe, until_closed
from tests.security.token_steps import Browser, create_token, send, sign_in

CLOSE_POLICY = 1008
ROUNDS, TOKENS, OPENINGS = 10, 6, 3  # rounds; tokens revoked a round; openings of each
STREAMS = 6  # sign-ins at once around a revocation
CLOSE_WAIT_S = 15.0  # a socket still open after this outlived the revocation
T = TypeVar("T")
RACE_ENV = {**QUIET, "TN_REST_REQUESTS_PER_S": "0", "TN_LIVE_SESSIONS_PER_ACCOUNT_MAX": "1000",
            "TN_WORKER_SESSIONS_PER_ACCOUNT_MAX": "1000"}


async def at_once(revokes: list[Callable[[], object]], openings: list[Awaitable[T]]
                  ) -> list[T]:
    """Send the revocations (each in a thread) and make the openings all at once; what each
    opening gave."""
    done = await asyncio.gather(*openings, *(asyncio.to_thread(r) for r in revokes))
    return done[:len(openings)]


async def around_a_revocation(revoke: Callable[[], object],
                              open_one: Callable[[], Awaitable[T]]) -> list[T]:
    """Open (``open_one``) in ``STREAMS`` loops at once, from before the revocation (sent in
    a thread once each loop is under way) until after it was answered; what each gave."""
    opened: list[T] = []
    underway, revoked = asyncio.Event(), asyncio.Event()

    async def loop() -> None:
        while not revoked.is_set():
            opened.append(await open_one())
            if len(opened) >= STREAMS:
                underway.set()

    async with asyncio.TaskGroup() as group:
        for _ in range(STREAMS):
            group.create_task(loop())
        await underway.wait()
        await asyncio.to_thread(revoke)
        revoked.set()
    return opened


def revoker(api: Api, token_id: str) -> Callable[[], object]:
    return lambda: api.ok("DELETE", f"/api/tokens/{token_id}")


async def open_live(coord: Coordinator, headers: dict[str, str]) -> ClientConnection | None:
    """A live socket, or None if it was refused at the handshake."""
    try:
        return await connect(coord.ws_url + "/ws/live", additional_headers=headers)
    except InvalidStatus as exc:
        assert exc.response.status_code == 403, exc
        return None


async def live_closed(ws: ClientConnection) -> tuple[int | None, str]:
    """How the coordinator ended a live socket: the close code (None: still open after the
    wait) and its last error frame's reason."""
    frames: list[dict[str, Any]] = []
    code = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_WAIT_S):
            try:
                while True:
                    frames.append(json.loads(await ws.recv()))
            except ConnectionClosed:
                code = ws.close_code
    await ws.close()
    errors = [f["reason"] for f in frames if f.get("type") == "error"]
    return code, errors[-1] if errors else ""


async def worker_closed(peer: Peer) -> tuple[int | None, list[Any]]:
    """How the coordinator ended a worker session (None: still open after the wait)."""
    try:
        return await peer.until_closed(CLOSE_WAIT_S)
    except TimeoutError:
        return None, []


async def test_a_sign_in_racing_a_revocation_does_not_outlive_it(cluster: Cluster) -> None:
    coord = cluster.coordinator(RACE_ENV)
    me = coord.api()
    outlived: list[int] = []  # the status of a call with each cookie after the revocation
    refusals: list[Response] = []
    for round_no in range(ROUNDS):
        made = create_token(me, f"sign-in-race-{round_no}")
        assert Api(coord.url, made["token"]).call("GET", "/api/wallet").status == 200  # cached
        answers = await around_a_revocation(
            revoker(me, made["id"]),
            lambda token=made["token"]: asyncio.to_thread(sign_in, coord.url, token=token))
        for resp, browser in answers:
            if browser is None:
                refusals.append(resp)
            else:
                after = await asyncio.to_thread(browser.call, "GET", "/api/wallet")
                outlived.append(after.status)
    assert outlived and refusals, "no sign-in came before, or none after, a revocation"
    assert set(outlived) == {401}, "a sign-in outlived the revocation of its token"
    for resp in refusals:
        assert resp.status == 401, resp.raw
        assert "revoked at" in resp.json["error"], resp.raw
        assert "tn token create" in resp.json["error"], resp.raw


async def test_a_live_socket_racing_a_revocation_is_closed(cluster: Cluster) -> None:
    coord = cluster.coordinator(RACE_ENV)
    me = coord.api()
    for round_no in range(ROUNDS):
        made = [create_token(me, f"live-race-{round_no}-{i}") for i in range(TOKENS)]
        ways: list[dict[str, str]] = []
        for token in made:  # a bearer token, and browsers signed in with it (not yet cached)
            ways.append({"Authorization": f"Bearer {token['token']}"})
            for _ in range(OPENINGS - 1):
                _, browser = await asyncio.to_thread(sign_in, coord.url, token=token["token"])
                assert browser is not None
                ways.append({"Cookie": browser.cookie, "Origin": coord.url})
        opened = await at_once([revoker(me, token["id"]) for token in made],
                               [open_live(coord, headers) for headers in ways])
        ended = await asyncio.gather(*(live_closed(ws) for ws in opened if ws))
        assert {code for code, _ in ended} <= {CLOSE_POLICY}, \
            "a live socket outlived the revocation of its token"
        for _, error in ended:
            assert "revoked" in error, error


async def test_a_worker_hello_racing_a_revocation_is_closed(cluster: Cluster) -> None:
    coord = cluster.coordinator(RACE_ENV)
    worker_api = coord.api(coord.worker_token)
    hellos = itertools.count()
    async with contextlib.AsyncExitStack() as held:

        async def hello(token: str) -> Peer:
            ws = await held.enter_async_context(
                connect(coord.ws_url + "/ws/worker", compression=None))
            peer = Peer(ws)
            await peer.send(w.Hello(f"race-{next(hellos)}", token))
            return peer

        for round_no in range(ROUNDS):
            made = [create_token(worker_api, f"hello-race-{round_no}-{i}")  # not cached
                    for i in range(TOKENS)]
            peers = await at_once([revoker(worker_api, token["id"]) for token in made],
                                  [hello(token["token"]) for token in made
                                   for _ in range(OPENINGS)])
            ended = await asyncio.gather(*(worker_closed(p) for p in peers))
            assert {code for code, _ in ended} == {CLOSE_POLICY}, \
                "a worker session outlived the revocation of its token"
            for _, got in ended:
                errors = [m for m in got if isinstance(m, w.Error)]
                if errors:  # refused at hello: the refusal says why and what to do
                    assert "revoked at" in errors[-1].reason, errors
                    assert "tn token create" in errors[-1].reason, errors


async def test_revoking_a_token_closes_the_live_socket_of_a_browser_signed_in_with_it(
    cluster: Cluster,
) -> None:
    coord = cluster.coordinator(QUIET)
    me = coord.api()
    made = create_token(me, "browser")
    kept_token = create_token(me, "kept")
    _, browser = sign_in(coord.url, token=made["token"])
    _, kept = sign_in(coord.url, token=kept_token["token"])
    assert browser is not None and kept is not None

    async def live_of(b: Browser) -> ClientConnection:
        return await connect(coord.ws_url + "/ws/live",
                             additional_headers={"Cookie": b.cookie, "Origin": coord.url})

    async with await live_of(browser) as doomed, await live_of(kept) as other:
        for ws in (doomed, other):
            assert (await subscribe(ws, "wallet"))["type"] == "wallet"
        assert send(me, "DELETE", f"/api/tokens/{made['id']}").status == 200
        frames = await until_closed(doomed)
        assert frames[-1]["type"] == "error" and "token revoked" in frames[-1]["reason"], frames
        assert doomed.close_code == CLOSE_POLICY
        assert "token revoked" in (doomed.close_reason or "")
        assert (await subscribe(other, "workers"))["type"] == "workers"  # lives on
    assert browser.call("GET", "/api/wallet").status == 401
