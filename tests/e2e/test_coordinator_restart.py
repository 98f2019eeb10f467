"""The coordinator dies mid-task and comes back on the same data directory.

Acknowledged results must survive (DESIGN invariant 5), the task must complete with every
item's output exactly once, and workers are expected to reconnect by themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from schema import worker as w
from tests.e2e.harness import Cluster, Coordinator, Worker, wait_until
from tests.e2e.rest import Api
from tests.e2e.wire import output, session

ITEMS, CHUNK = 300, 10
CODE = """\
import time

def process(item):
    time.sleep(0.02)  # 0.2 s per chunk: the task is still running when the coordinator dies
    return [item, item * 3 + 1]
"""
EXPECTED = [[i, i * 3 + 1] for i in range(ITEMS)]



def done_indexes(api: Api, task_id: str) -> set[int]:
    return {c["index"] for c in api.chunks(task_id) if c["state"] == "done"}


def start_task(coord: Coordinator) -> tuple[Api, str]:
    api = coord.api()
    created = api.submit(CODE, list(range(ITEMS)), {"chunk_size": CHUNK})
    assert created["chunks_total"] == ITEMS // CHUNK
    return api, created["id"]


def progress_then_snapshot(api: Api, task_id: str, workers: list[Worker]) -> set[int]:
    """Wait for some chunks to be done, then return the done set, made durable first."""
    wait_until(lambda: api.task(task_id), 30, "a few chunks done while others run",
               ready=lambda i: i["chunks_done"] >= 6 and i["chunks_leased"] > 0,
               interval_s=0.02, watch=tuple(workers))
    before = done_indexes(api, task_id)
    # ?partial=true waits until everything handled so far is committed, so every chunk in
    # `before` is acknowledged-durable by the time we kill; its outputs are already right.
    partial = api.results(task_id, partial=True)
    for index in before:
        span = slice(index * CHUNK, (index + 1) * CHUNK)
        assert partial[span] == EXPECTED[span], f"chunk {index} before the crash"
    assert api.task(task_id)["state"] == "running", "the crash should come mid-task"
    return before


def check_completed(api: Api, task_id: str, before: set[int], workers: list[Worker]) -> None:
    info = api.wait_state(task_id, timeout_s=40, watch=tuple(workers))
    assert info["state"] == "completed", info
    assert info["chunks_done"] == ITEMS // CHUNK and info["items_done"] == ITEMS
    results = api.results(task_id)
    assert len(results) == ITEMS
    assert results == EXPECTED
    assert before <= done_indexes(api, task_id)


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_workers_reconnect_by_themselves(
    how: str, coordinator: Coordinator, start_worker: Callable[..., Worker]
) -> None:
    workers = [start_worker("rw1", slots=2, wait=False), start_worker("rw2", slots=2, wait=False)]
    for worker in workers:
        worker.wait_connected()
    api, task_id = start_task(coordinator)
    before = progress_then_snapshot(api, task_id, workers)

    if how == "sigkill":
        coordinator.kill()
    else:
        coordinator.stop()
    coordinator.restart()

    assert before <= done_indexes(api, task_id), "acknowledged results lost by the restart"
    for worker in workers:  # fails at once if the worker process exits instead
        worker.wait_connected(times=2, timeout_s=20)
    check_completed(api, task_id, before, workers)


def test_acknowledged_results_survive_sigkill(
    cluster: Cluster, coordinator: Coordinator, start_worker: Callable[..., Worker]
) -> None:
    """The coordinator side of the restart, independent of the worker's reconnect bug: a
    worker process that died with its coordinator is started again, as a supervisor would."""
    workers = [start_worker("dw1", slots=2, wait=False), start_worker("dw2", slots=2, wait=False)]
    for worker in workers:
        worker.wait_connected()
    api, task_id = start_task(coordinator)
    before = progress_then_snapshot(api, task_id, workers)

    coordinator.kill()
    coordinator.restart()

    after_restart = api.task(task_id)
    assert after_restart["state"] == "running"
    assert before <= done_indexes(api, task_id), "acknowledged results lost by the restart"
    assert after_restart["chunks_done"] >= len(before)

    live: list[Worker] = []
    for worker in workers:
        if worker.alive:
            worker.wait_connected(times=2)
            live.append(worker)
        else:  # the supervisor's restart, same id and cache directory
            live.append(cluster.worker(coordinator, worker.worker_id, slots=2))
    check_completed(api, task_id, before, live)


def test_completed_task_survives_restart(
    coordinator: Coordinator, start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker("cw1", slots=2)
    api = coordinator.api()
    created = api.submit("def process(x):\n    return -x\n", list(range(25)), {"chunk_size": 4})
    info = api.wait_state(created["id"], watch=(worker,))
    assert info["state"] == "completed"
    worker.kill()

    coordinator.kill()
    coordinator.restart()

    again: dict[str, Any] = api.task(created["id"])
    assert again["state"] == "completed"
    assert again["chunks_done"] == info["chunks_done"] and again["finished_ms"] is not None
    assert api.results(created["id"]) == [-x for x in range(25)]


async def test_restart_keeps_accepted_leases_and_drops_the_rest(coordinator: Coordinator) -> None:
    """Spoken by hand: after a SIGKILL, a re-sent result of an accepted lease is accepted
    again (idempotent) and a lease that was only assigned is dropped, fenced off and its
    chunk assigned anew under a lease id never used before the restart."""
    api = coordinator.api()
    async with session(coordinator, "raw") as before:
        task_id = api.submit("def process(x):\n    return x\n", [1, 2, 3, 4],
                             {"chunk_size": 2})["id"]
        first = await before.expect(w.Assign)
        await before.send(w.Result(first.lease_id, output([10, 20])))
        assert (await before.expect(w.Accepted)).lease_id == first.lease_id
        second = await before.expect(w.Assign)  # the next chunk, pushed in the same turn
        coordinator.kill()
    coordinator.restart()

    assert [c["state"] for c in api.chunks(task_id)] == ["done", "pending"]
    held = [first.lease_id, second.lease_id]
    async with session(coordinator, "raw", held_leases=held) as after:
        assert after.welcome is not None
        assert (after.welcome.resumed, after.welcome.dropped) == ([], [second.lease_id])
        again = await after.expect(w.Assign)
        assert again.chunk_index == 1 and again.lease_id not in held
        await after.send(w.Result(first.lease_id, output([10, 20])))  # a re-send
        assert (await after.expect(w.Accepted)).lease_id == first.lease_id
        await after.send(w.Result(second.lease_id, output([-1, -1])))  # the dropped lease
        assert (await after.expect(w.Rejected)).lease_id == second.lease_id
        assert api.results(task_id, partial=True) == [10, 20, None, None]
        await after.send(w.Result(again.lease_id, output([30, 40])))
        assert (await after.expect(w.Accepted)).lease_id == again.lease_id
    assert api.wait_state(task_id)["state"] == "completed"
    assert api.results(task_id) == [10, 20, 30, 40]
