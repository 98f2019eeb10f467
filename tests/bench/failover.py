"""Seconds from a worker's death to its chunk being leased to another worker.

SIGKILL closes the worker's socket (detected at once; the lease waits the disconnect grace
for a resume); SIGSTOP leaves a silent socket (detected when no heartbeat came for lease_ms).
The other worker has a free slot, so the time is detection plus re-queue, not queueing.
"""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

from tests.bench.common import Coordinator, start_worker

SLOW = "import time\n\ndef process(item):\n    time.sleep(0.5)\n    return item\n"


def _chunks(coord: Coordinator, task_id: str) -> list[dict[str, object]]:
    page: list[dict[str, object]] = coord.request(
        "GET", f"/api/tasks/{task_id}/chunks?limit=1000")["chunks"]
    return page


def measure(runs: int = 3, sig: int = signal.SIGKILL) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        coord = Coordinator(Path(tmp) / "data")  # default heartbeat 2 s, lease 3.5 s
        try:
            for run in range(runs):
                a = start_worker(coord, f"a{run}", 1, Path(tmp) / f"ca{run}", ["--prefetch", "0"])
                b = start_worker(coord, f"b{run}", 2, Path(tmp) / f"cb{run}", ["--prefetch", "0"])
                # cap 2: one chunk each, and b keeps a free slot for the chunk a loses
                task = coord.submit(SLOW, list(range(40)), {"chunk_size": 4,
                                                            "max_concurrency": 2})
                victim = None
                while victim is None:
                    for c in _chunks(coord, task["id"]):
                        if c["state"] == "leased" and c["worker"] == f"a{run}":
                            victim = c
                    time.sleep(0.01)
                a.p.send_signal(sig)
                killed = time.monotonic()
                index = victim["index"]
                while True:
                    c = _chunks(coord, task["id"])[int(str(index))]
                    if c["lease_id"] not in (None, victim["lease_id"]) or c["state"] == "done":
                        break
                    time.sleep(0.005)
                out.append(time.monotonic() - killed)
                coord.request("POST", f"/api/tasks/{task['id']}/cancel")
                a.stop(signal.SIGKILL)
                b.stop()
        finally:
            coord.stop()
    return out


if __name__ == "__main__":
    for name, sig in (("SIGKILL", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
        times = measure(sig=sig)
        print(f"{name} -> reassigned: " + ", ".join(f"{t:.2f}s" for t in times))
