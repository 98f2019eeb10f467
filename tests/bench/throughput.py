"""No-op chunks per second through real workers, and the coordinator's CPU per chunk."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.bench.common import Coordinator, start_worker

NOOP = "def process(item):\n    return item\n"


def machine_jiffies() -> int:
    """Clock ticks the whole machine has been busy so far (all CPUs, from /proc/stat): every
    process, the kernel's work for them and interrupts."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8])
    return user + nice + system + irq + softirq


def measure(workers: int, slots: int, chunks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(Path(tmp) / "data")
        procs = [start_worker(coord, f"w{i}", slots, Path(tmp) / f"cache{i}")
                 for i in range(workers)]
        try:
            # warm-up: every worker connects, downloads code and starts its children
            warm = coord.submit(NOOP, list(range(workers * slots * 4)), {"chunk_size": 1})
            coord.wait_task(warm["id"])
            cpu0 = coord.cpu_s()
            t0 = time.monotonic()
            task = coord.submit(NOOP, list(range(chunks)), {"chunk_size": 1})
            info = coord.wait_task(task["id"])
            wall = time.monotonic() - t0
            cpu = coord.cpu_s() - cpu0
            assert info["state"] == "completed", info
            run_s = (info["finished_ms"] - info["created_ms"]) / 1000
            return {
                "chunks": chunks, "workers": workers, "slots": slots,
                "chunks_per_s": chunks / run_s, "wall_s": wall,
                "coordinator_cpu_us_per_chunk": cpu / chunks * 1e6,
            }
        finally:
            for p in procs:
                p.stop()
            coord.stop()


if __name__ == "__main__":
    for w, s in ((2, 2), (4, 2)):
        r = measure(w, s, 20000)
        print(f"{w} workers x {s} slots: {r['chunks_per_s']:.0f} chunks/s, "
              f"coordinator {r['coordinator_cpu_us_per_chunk']:.0f} us CPU/chunk")
