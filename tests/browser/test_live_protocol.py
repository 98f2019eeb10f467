"""The dashboard's server side without a browser: the chunk-state array and its live deltas
agree, the cookie works on /ws/live only from this site's pages, views are refused to those
who may not see them; and the pure pieces (grid diffs, burn-down history, passwords)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from coordinator.accounts import check_password, hash_password
from coordinator.live_views import GRID_BLOCK, HISTORY_SAMPLES_MAX, ChunkGrid, History
from tests.browser.conftest import Stack
from tests.browser.flows import SLOW, items

T = TypeVar("T")

# ---- pure pieces ---------------------------------------------------------------------------


def test_grid_diff_sends_changed_blocks_and_refetch_when_large() -> None:
    states = bytearray(10 * GRID_BLOCK + 7)
    grid = ChunkGrid(states)
    assert grid.diff(states) == [] and grid.seq == 0
    states[5] = 2
    states[3 * GRID_BLOCK + 1] = 1
    states[4 * GRID_BLOCK] = 1
    states[-1] = 3
    ranges = grid.diff(states)
    assert ranges is not None and grid.seq == 1
    assert [(r.offset, len(r.states)) for r in ranges] == [
        (0, GRID_BLOCK), (3 * GRID_BLOCK, 2 * GRID_BLOCK), (10 * GRID_BLOCK, 7)]
    mirror = bytearray(10 * GRID_BLOCK + 7)
    for r in ranges:
        mirror[r.offset:r.offset + len(r.states)] = r.states
    assert mirror == states and grid.shadow == states
    big = bytearray(b"\x02" * len(states))
    many = ChunkGrid(bytearray(200 * GRID_BLOCK))
    assert many.diff(bytearray(b"\x02" * 200 * GRID_BLOCK)) is None  # too much: refetch
    assert grid.diff(big) is not None  # 10 KiB is small enough to send


def test_history_is_bounded_and_ends_now() -> None:
    h = History()
    for second in range(5000):
        h.add(second * 1000, second, second * 10)
    assert len(h.points) <= HISTORY_SAMPLES_MAX
    samples = h.samples()
    assert samples[0].at_ms == 0 and samples[-1].at_ms == 4_999_000  # the whole life
    h.add(4_999_500, 5000, 50_000)  # within the spacing: kept as the latest only
    assert h.samples()[-1].done == 5000


def test_passwords_are_salted_scrypt() -> None:
    a, b = hash_password("demo"), hash_password("demo")
    assert a != b and a.startswith("scrypt$32768$8$1$")  # a salt per hash
    assert check_password("demo", a) and not check_password("Demo", a)
    assert not check_password("demo", "plain") and not check_password("demo", "md5$x$y$z$a$b")


# ---- against the session's coordinator ------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` in a thread of its own (Playwright's sync API holds this one's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _cookie(stack: Stack, name: str) -> str:
    req = urllib.request.Request(
        stack.url + "/auth/signin", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"name": name, "password": "demo"}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.headers["Set-Cookie"].split(";", 1)[0])


def _states(stack: Stack, task_id: str) -> tuple[int, bytearray]:
    req = urllib.request.Request(f"{stack.url}/api/tasks/{task_id}/chunk-states", headers={
        "Authorization": f"Bearer {stack.coordinator.customer_token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/octet-stream"
        return int(resp.headers["X-TN-Chunk-Seq"]), bytearray(resp.read())


async def _watch(stack: Stack, task_id: str, done: bytearray) -> bytearray:
    """Mirror a task's chunk states from one fetch plus live deltas until all are done."""
    url = stack.url.replace("http", "ws") + "/ws/live"
    headers = {"Authorization": f"Bearer {stack.coordinator.customer_token}"}
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": [f"grid:{task_id}"]}))
        mirror: bytearray | None = None
        seq = 0
        while mirror != done:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if msg["type"] == "chunks" and msg["refetch"]:
                seq, mirror = await asyncio.to_thread(_states, stack, task_id)
            elif msg["type"] == "chunks" and mirror is not None and msg["seq"] > seq:
                assert msg["seq"] == seq + 1, "a live update went missing"
                seq = msg["seq"]
                for offset, data in msg["ranges"]:
                    raw = base64.b64decode(data)
                    mirror[offset:offset + len(raw)] = raw
        return mirror


def test_live_deltas_rebuild_the_chunk_states(stack: Stack) -> None:
    created = stack.customer.submit(SLOW, items(240), {"chunk_size": 3, "max_concurrency": 4})
    done = bytearray(b"\x02" * created["chunks_total"])
    assert run(_watch(stack, created["id"], done)) == done
    assert _states(stack, created["id"])[1] == done


async def _first(url: str, headers: dict[str, str], topics: list[str]) -> list[dict[str, Any]]:
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": topics}))
        return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in topics]


def test_socket_cookie_needs_our_origin_and_views_are_guarded(stack: Stack) -> None:
    url = stack.url.replace("http", "ws") + "/ws/live"
    cookie = _cookie(stack, "demo-customer")
    mine = run(_first(url, {"Cookie": cookie, "Origin": stack.url}, ["wallet"]))
    assert mine[0]["type"] == "wallet" and mine[0]["balance"] >= 0
    try:  # a page of another site makes the browser send the cookie: refused
        run(_first(url, {"Cookie": cookie, "Origin": "https://evil.example"},
                           ["wallet"]))
        raise AssertionError("a cross-site socket was accepted")
    except InvalidStatus as exc:
        assert exc.response.status_code == 403
    refused = run(_first(url, {"Cookie": cookie, "Origin": stack.url},
                                 ["platform", "task:t_not_yours", "grid:t_not_yours"]))
    assert [(m["type"], m["topic"]) for m in refused] == [
        ("error", "platform"), ("error", "task:t_not_yours"), ("error", "grid:t_not_yours")]
    admin = _cookie(stack, "demo-admin")
    view = run(_first(url, {"Cookie": admin, "Origin": stack.url}, ["platform"]))[0]
    assert view["type"] == "platform" and view["workers_total"] == 2
