"""Chunks that fail: retried up to max_attempts, then the task fails with the reason kept."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.harness import FAST_ENV, Cluster, Coordinator, Worker
from tests.e2e.rest import Api

RAISES_ON_13 = """\
def process(x):
    if x == 13:
        raise ValueError(f"bad {x}")
    return x * 10
"""
EXPECTED_13 = [None if 10 <= x < 20 else x * 10 for x in range(30)]  # chunk 1 holds item 13


@pytest.fixture(scope="module")
def one_worker(module_cluster: Cluster) -> Iterator[tuple[Api, Worker]]:
    coord = module_cluster.coordinator(FAST_ENV)
    yield coord.api(), module_cluster.worker(coord, "lonely", slots=2)


def finish(api: Api, task_id: str, workers: tuple[Worker, ...], timeout_s: float = 20
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    info = api.wait_state(task_id, timeout_s=timeout_s, watch=workers)
    return info, api.chunks(task_id)


def test_raising_chunk_is_retried_then_fails_the_task(one_worker: tuple[Api, Worker]) -> None:
    api, worker = one_worker
    created = api.submit(RAISES_ON_13, list(range(30)), {"chunk_size": 10, "max_attempts": 3})

    info, chunks = finish(api, created["id"], (worker,))

    assert info["state"] == "failed", info
    assert (info["chunks_done"], info["chunks_failed"], info["items_done"]) == (2, 1, 20)
    bad = chunks[1]
    assert (bad["state"], bad["attempts"]) == ("failed", 3), bad
    assert "ValueError: bad 13" in bad["error"] and "item 3" in bad["error"], bad["error"]
    assert api.results(created["id"]) == EXPECTED_13

    # one chunk's story: the failed chunk's attempts, and a done chunk's result preview
    detail = api.ok("GET", f"/api/tasks/{created['id']}/chunks/1")
    assert [(a["worker"], a["final"]) for a in detail["history"]] == [
        ("lonely", False), ("lonely", False), ("lonely", True)]
    assert all("ValueError: bad 13" in a["error"] for a in detail["history"])
    assert detail["preview"] is None
    done = api.ok("GET", f"/api/tasks/{created['id']}/chunks/2")
    assert (done["chunk"]["state"], done["preview"]) == ("done", "[200,210,220]")
    assert api.call("GET", f"/api/tasks/{created['id']}/chunks/3").status == 404


def test_chunk_past_its_timeout_is_failed(one_worker: tuple[Api, Worker]) -> None:
    api, worker = one_worker
    code = "import time\n\ndef process(x):\n    time.sleep(30)\n    return x\n"
    created = api.submit(code, [1], {"chunk_size": 1, "max_attempts": 2,
                                     "chunk_timeout_ms": 300})

    info, chunks = finish(api, created["id"], (worker,))

    assert info["state"] == "failed", info
    assert (chunks[0]["state"], chunks[0]["attempts"]) == ("failed", 2), chunks[0]
    assert "deadline" in chunks[0]["error"], chunks[0]["error"]


def test_unencodable_output_fails_without_retry(one_worker: tuple[Api, Worker]) -> None:
    api, worker = one_worker
    created = api.submit("def process(x):\n    return {x}\n", [1, 2], {"max_attempts": 3})

    info, chunks = finish(api, created["id"], (worker,))

    assert info["state"] == "failed", info
    assert (chunks[0]["state"], chunks[0]["attempts"]) == ("failed", 1), chunks[0]
    assert chunks[0]["error"]
    # the worker is fine afterwards
    ok = api.submit("def process(x):\n    return x\n", [3, 4], {"chunk_size": 1})
    assert finish(api, ok["id"], (worker,))[0]["state"] == "completed"


def test_chunk_failing_on_every_worker_still_uses_its_attempts(
    coordinator: Coordinator, start_worker: Callable[..., Worker]
) -> None:
    workers = (start_worker("fa", slots=1, wait=False), start_worker("fb", slots=1, wait=False))
    for w in workers:
        w.wait_connected()
    api = coordinator.api()
    created = api.submit(RAISES_ON_13, list(range(30)), {"chunk_size": 10, "max_attempts": 3})

    # normally over in about a second; stuck for good when the bug bites
    info, chunks = finish(api, created["id"], workers, timeout_s=5)

    assert info["state"] == "failed", info
    assert (chunks[1]["state"], chunks[1]["attempts"]) == ("failed", 3), chunks[1]
    assert api.results(created["id"]) == EXPECTED_13
