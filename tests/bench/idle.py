"""Coordinator memory with 10,000 idle worker sessions (each said hello and got welcome)."""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from pathlib import Path

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from schema import worker as w
from tests.bench.common import Coordinator

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(w.CoordinatorMessage)


async def _open(url: str, token: str, wid: str) -> ClientConnection:
    ws = await connect(url, compression=None, open_timeout=60, ping_interval=None)
    await ws.send(ENC.encode(w.Hello(wid, token)))
    assert isinstance(DEC.decode(await ws.recv(decode=False)), w.Welcome)
    return ws


async def _hold(coord: Coordinator, n: int) -> tuple[int, float]:
    url = f"ws://127.0.0.1:{coord.port}/ws/worker"
    token = coord.tokens["worker_token"]
    sem = asyncio.Semaphore(200)
    socks: list[ClientConnection] = []

    async def one(i: int) -> None:
        async with sem:
            socks.append(await _open(url, token, f"idle-{i}"))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.monotonic() - t0
    await asyncio.sleep(1)
    rss = coord.rss_bytes()
    await asyncio.gather(*(s.close() for s in socks))
    return rss, took


def measure(n: int = 10_000) -> tuple[int, int, float]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n * 2 + 1000)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(Path(tmp) / "data", {"TN_HEARTBEAT_MS": "600000",
                                                  "TN_LEASE_MS": "1200000",
                                                  # all n sessions are of one account
                                                  "TN_WORKER_SESSIONS_PER_ACCOUNT_MAX": str(n)})
        try:
            base = coord.rss_bytes()
            rss, took = asyncio.run(_hold(coord, n))
            return base, rss, took
        finally:
            coord.stop()


if __name__ == "__main__":
    base, rss, took = measure()
    print(f"10,000 idle sessions: RSS {rss / 2**20:.0f} MiB (idle coordinator {base / 2**20:.0f}"
          f" MiB; {(rss - base) / 10_000 / 1024:.1f} KiB per session), opened in {took:.1f}s")
