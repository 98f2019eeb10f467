"""Cancelling a running task: its leases are revoked and the workers move on at once."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.e2e.harness import Coordinator, Worker, wait_until

SLOW_CHUNK_S = 20  # a chunk of the slow task runs this long unless it is revoked
SLOW = f"""\
import time

def process(item):
    time.sleep({SLOW_CHUNK_S / 4})
    return item
"""


def test_cancel_revokes_leases_and_workers_take_other_work(
    coordinator: Coordinator, start_worker: Callable[..., Worker]
) -> None:
    workers = [start_worker("cw1", slots=1, wait=False), start_worker("cw2", slots=1, wait=False)]
    for w in workers:
        w.wait_connected()
    api = coordinator.api()
    slow = api.submit(SLOW, list(range(40)), {"chunk_size": 4, "name": "slow"})["id"]
    wait_until(lambda: {c["worker"] for c in api.chunks(slow) if c["state"] == "leased"}, 20,
               "both workers holding slow chunks", ready=lambda held: held == {"cw1", "cw2"},
               watch=tuple(workers))
    assert api.call("GET", f"/api/tasks/{slow}/results").status == 409  # still running

    resp = api.cancel(slow)

    assert resp.status == 200, resp.raw
    assert resp.json["state"] == "cancelled"
    info = api.task(slow)
    assert info["state"] == "cancelled" and info["finished_ms"] is not None
    assert info["chunks_leased"] == 0 and info["chunks_done"] == 0
    assert {c["state"] for c in api.chunks(slow)} == {"pending"}
    for w in workers:
        wait_until(lambda w=w: w.count("revoked"), 10, f"{w.name} to log a revoke",
                   watch=(w,))
    again = api.cancel(slow)
    assert again.status == 409 and "already cancelled" in again.json["error"]
    assert api.results(slow) == [None] * 40

    # The workers dropped the slow chunks rather than finishing them: a second task
    # completes well before a slow chunk could have ended.
    started = time.monotonic()
    fast = api.submit("def process(x):\n    return x + 1000\n", list(range(30)),
                      {"chunk_size": 3, "name": "fast"})["id"]
    done = api.wait_state(fast, timeout_s=SLOW_CHUNK_S / 2, watch=tuple(workers))
    elapsed = time.monotonic() - started
    assert done["state"] == "completed", done
    assert api.results(fast) == [x + 1000 for x in range(30)]
    assert {c["worker"] for c in api.chunks(fast)} == {"cw1", "cw2"}
    assert elapsed < SLOW_CHUNK_S / 2
    assert api.task(slow)["state"] == "cancelled"  # and nothing of it ran again
    assert api.task(slow)["chunks_done"] == 0
