"""What 1,000 open dashboards cost chunk processing: no-op chunks per second through real
workers with 0 and with 1,000 live subscribers to ``tasks`` (all of the same customer, so
every update of the running task goes to all of them), alternating, three runs each (the
medians are compared).

    .venv/bin/python -m tests.browser.subscribers_bench [SUBSCRIBERS] [CHUNKS]

The subscribers are raw WebSocket clients in a child process that read every frame (so none
is dropped as too slow); coordinator, workers and subscribers share this machine's cores.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import BIN, Coordinator, start_worker
from tests.bench.throughput import NOOP

SUBSCRIBER = r"""
import asyncio, json, sys
from websockets.asyncio.client import connect

async def one(url, token, counts, ready):
    async with connect(url, additional_headers={"Authorization": "Bearer " + token},
                       compression=None, ping_interval=None, open_timeout=60,
                       max_size=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": ["tasks"]}))
        ready.append(1)
        async for _ in ws:
            counts[0] += 1

async def main(url, token, n):
    counts, ready = [0], []
    sem = asyncio.Semaphore(100)
    async def opened(i):
        async with sem:
            t = asyncio.create_task(one(url, token, counts, ready))
            while len(ready) <= i and not t.done():
                await asyncio.sleep(0.01)
            return t
    tasks = [await opened(i) for i in range(n)]
    print(json.dumps({"open": len(ready)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print(json.dumps({"frames": counts[0], "alive": sum(not t.done() for t in tasks)}),
          flush=True)
    for t in tasks:
        t.cancel()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def run_task(coord: Coordinator, chunks: int) -> tuple[float, float]:
    """(chunks per second, coordinator CPU microseconds per chunk) of one no-op task."""
    cpu0 = coord.cpu_s()
    task = coord.submit(NOOP, list(range(chunks)), {"chunk_size": 1, "max_concurrency": 64})
    info = coord.wait_task(task["id"])
    assert info["state"] == "completed", info
    cpu = coord.cpu_s() - cpu0
    return chunks / ((info["finished_ms"] - info["created_ms"]) / 1000), cpu / chunks * 1e6


def measure(subscribers: int = 1000, chunks: int = 20_000, rounds: int = 3) -> dict[str, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, subscribers * 2 + 1000)),
                                                hard))
    with tempfile.TemporaryDirectory() as tmp:
        # all the subscribers are of one account
        coord = Coordinator(Path(tmp) / "data",
                            {"TN_LIVE_SESSIONS_PER_ACCOUNT_MAX": str(subscribers)})
        workers = [start_worker(coord, f"w{i}", 2, Path(tmp) / f"cache{i}") for i in range(2)]
        subs: subprocess.Popen[str] | None = None
        try:
            coord.wait_task(coord.submit(NOOP, list(range(400)), {"chunk_size": 1})["id"])
            runs: dict[str, list[tuple[float, float]]] = {"0": [], str(subscribers): []}
            for round_ in range(rounds):
                runs["0"].append(run_task(coord, chunks))
                subs = subprocess.Popen(
                    [str(BIN / "python"), "-c", SUBSCRIBER, f"ws://127.0.0.1:{coord.port}/ws/live",
                     coord.tokens["customer_token"], str(subscribers)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert subs.stdin is not None and subs.stdout is not None
                opened = json.loads(subs.stdout.readline())
                assert opened["open"] == subscribers, opened
                time.sleep(1)  # the snapshots are out
                runs[str(subscribers)].append(run_task(coord, chunks))
                subs.stdin.write("\n")
                subs.stdin.flush()
                seen = json.loads(subs.stdout.readline())
                subs.wait(30)
                subs = None
                print(f"round {round_ + 1}: without {runs['0'][-1][0]:.0f} chunks/s, with "
                      f"{subscribers} subscribers {runs[str(subscribers)][-1][0]:.0f} chunks/s; "
                      f"{seen['frames']} frames read, {seen['alive']} still connected",
                      flush=True)
            base = statistics.median(r[0] for r in runs["0"])
            loaded = statistics.median(r[0] for r in runs[str(subscribers)])
            return {
                "chunks_per_s": base, "chunks_per_s_subscribed": loaded,
                "slowdown_percent": (base - loaded) / base * 100,
                "cpu_us_per_chunk": statistics.median(r[1] for r in runs["0"]),
                "cpu_us_per_chunk_subscribed": statistics.median(
                    r[1] for r in runs[str(subscribers)]),
            }
        finally:
            if subs is not None:
                subs.kill()
            for w in workers:
                w.stop()
            coord.stop()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    r = measure(n, int(sys.argv[2]) if len(sys.argv) > 2 else 20_000)
    print(f"{n} live subscribers: {r['chunks_per_s']:.0f} -> {r['chunks_per_s_subscribed']:.0f}"
          f" chunks/s ({r['slowdown_percent']:+.1f} % slower); coordinator CPU per chunk "
          f"{r['cpu_us_per_chunk']:.0f} -> {r['cpu_us_per_chunk_subscribed']:.0f} us")
