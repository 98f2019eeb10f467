"""Tasks run to completion on two real workers: outputs in item order, work spread out.

One coordinator and two workers (2 slots each) serve every test of this module.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from client import sdk
from client.sdk import Client
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator, Worker, wait_until
from tests.e2e.rest import TERMINAL, Api

WORKERS = ("e2e-w1", "e2e-w2")


@dataclass
class Stack:
    coordinator: Coordinator
    workers: list[Worker]
    api: Api


@pytest.fixture(scope="module")
def stack(module_cluster: Cluster) -> Iterator[Stack]:
    coord = module_cluster.coordinator(FAST_ENV)
    workers = [module_cluster.worker(coord, wid, slots=2, wait=False) for wid in WORKERS]
    for w in workers:
        w.wait_connected()
    yield Stack(coord, workers, coord.api())


def run_to_completion(s: Stack, created: dict[str, object]) -> list[object]:
    info = s.api.wait_state(str(created["id"]), timeout_s=60, watch=tuple(s.workers))
    assert info["state"] == "completed", info
    assert info["chunks_done"] == created["chunks_total"]
    assert info["items_done"] == info["items_total"] == created["items_total"]
    assert info["chunks_leased"] == info["chunks_pending"] == info["chunks_failed"] == 0
    return s.api.results(str(created["id"]))


PROCESS_ITEM = """\
def process(item):
    return {"double": item["n"] * 2, "tag": item["s"][::-1] + "!"}
"""


def test_thousand_items_on_two_workers(stack: Stack) -> None:
    items = [{"n": i, "s": f"item-{i}"} for i in range(1000)]
    created = stack.api.submit(PROCESS_ITEM, items, {"chunk_size": 10, "name": "thousand"})
    assert created["chunks_total"] == 100
    assert created["items_total"] == 1000

    results = run_to_completion(stack, created)

    assert results == [{"double": 2 * i, "tag": f"item-{i}"[::-1] + "!"} for i in range(1000)]
    chunks = stack.api.chunks(created["id"])
    assert [c["index"] for c in chunks] == list(range(100))
    assert {c["state"] for c in chunks} == {"done"}
    spread = Counter(c["worker"] for c in chunks)
    print(f"chunks per worker: {dict(spread)}")
    assert set(spread) == set(WORKERS), f"chunks were not spread over both workers: {spread}"


def test_process_chunk_sees_whole_chunks(stack: Stack) -> None:
    code = """\
def process_chunk(items):
    # the chunk's length makes each output depend on how the data was chunked
    return [x * 3 + len(items) for x in items]
"""
    created = stack.api.submit(code, list(range(95)), {"chunk_size": 10})
    assert created["chunks_total"] == 10

    results = run_to_completion(stack, created)

    assert results == [x * 3 + (10 if x < 90 else 5) for x in range(95)]


def test_jsonl_dataset(stack: Stack) -> None:
    code = """\
def process(item):
    return [item["k"], item["v"] ** 2, sorted(item)]
"""
    lines = [json.dumps({"k": f"key{i}", "v": i}) for i in range(50)]
    data = "\n".join(lines[:25]) + "\n\n" + "\n".join(lines[25:]) + "\n"  # a blank line is fine
    created = stack.api.submit(code, data, {"chunk_size": 7}, data_name="items.jsonl")
    assert created["items_total"] == 50
    assert created["chunks_total"] == 8

    results = run_to_completion(stack, created)

    assert results == [[f"key{i}", i * i, ["k", "v"]] for i in range(50)]


def test_csv_dataset(stack: Stack) -> None:
    code = """\
def process(row):
    return f"{row['name']}:{int(row['a']) + int(row['b'])}"
"""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["name", "a", "b"])
    for i in range(40):
        writer.writerow([f"row, {i}", i, 100 - i * 2])  # a quoted comma in the name
    created = stack.api.submit(code, buf.getvalue(), {"chunk_size": 8}, data_name="rows.csv")
    assert created["items_total"] == 40

    results = run_to_completion(stack, created)

    assert results == [f"row, {i}:{100 - i}" for i in range(40)]


def test_zip_code_with_helper_modules(stack: Stack) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", "from helper import scale\nfrom pkg.util import tag\n\n"
                               "def process(item):\n    return tag(scale(item))\n")
        zf.writestr("helper.py", "FACTOR = 7\n\ndef scale(x):\n    return x * FACTOR\n")
        zf.writestr("pkg/__init__.py", "")
        zf.writestr("pkg/util.py", "def tag(x):\n    return f'<{x}>'\n")
    created = stack.api.submit(buf.getvalue(), list(range(60)), {"chunk_size": 10},
                               code_name="bundle.zip")

    results = run_to_completion(stack, created)

    assert results == [f"<{x * 7}>" for x in range(60)]


def test_max_concurrency_is_never_exceeded(stack: Stack) -> None:
    code = "import time\n\ndef process(x):\n    time.sleep(0.02)\n    return x + 1\n"
    created = stack.api.submit(code, list(range(40)), {"chunk_size": 4, "max_concurrency": 1})
    seen: list[int] = []

    def sample() -> dict[str, object]:
        info = stack.api.task(created["id"])
        seen.append(int(info["chunks_leased"]))
        return info

    wait_until(sample, 30, "the capped task to complete", interval_s=0.01,
               ready=lambda info: info["state"] == "completed", watch=tuple(stack.workers))
    assert max(seen) == 1, f"leases held at once, sampled: {seen}"
    assert stack.api.results(created["id"]) == [x + 1 for x in range(40)]


async def test_sdk_submit_watch_and_download(stack: Stack, tmp_path: Path) -> None:
    """The project's own SDK end to end: streamed upload, live-socket watch, results."""
    (tmp_path / "main.py").write_text("def process(x):\n    return {'x': x, 'neg': -x}\n")
    (tmp_path / "data.json").write_text(json.dumps(list(range(200))))
    client = Client(stack.coordinator.url, stack.coordinator.customer_token)
    created = client.submit_task(tmp_path / "main.py", tmp_path / "data.json",
                                 {"chunk_size": 20, "name": "via sdk"})
    assert created["chunks_total"] == 10

    updates: list[dict[str, Any]] = []

    def on_update(info: dict[str, Any]) -> bool:
        updates.append(info)
        return info["state"] in TERMINAL

    async with asyncio.timeout(30):
        final = await sdk.watch_task(stack.coordinator.url, stack.coordinator.customer_token,
                                     created["id"], on_update)
    assert final["state"] == "completed", updates
    assert final["items_done"] == 200
    out = io.BytesIO()
    client.results_to(created["id"], out)
    assert json.loads(out.getvalue()) == [{"x": x, "neg": -x} for x in range(200)]
