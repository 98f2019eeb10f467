"""A worker killed with SIGKILL mid-chunk: its chunk goes to another worker, nothing is lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.harness import GRACE_MS, LEASE_MS, TICK_MS, Coordinator, Worker, wait_until

SLOW_ITEM = """\
import time

def process(item):
    time.sleep(0.1)  # ten items: about a second per chunk
    return {"item": item, "square": item * item}
"""

# The dead worker's socket closes at once, so its lease waits out the disconnect grace and is
# re-queued on the next tick; a silent (not closed) connection would take the lease time. The
# bound allows both, plus a chunk's run time and generous slack for a loaded machine.
REASSIGN_BOUND_S = (LEASE_MS + GRACE_MS + 2 * TICK_MS) / 1000 + 1.0 + 5.0


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.add(pid)
    return out


def test_killed_worker_chunk_is_finished_by_another(
    coordinator: Coordinator, start_worker: Callable[..., Worker]
) -> None:
    # Two workers of 2 slots (no prefetch) and 3 chunks: whichever connects first gets two
    # chunks and is the victim; the other keeps a free slot for the victim's chunks.
    workers = {wid: start_worker(wid, slots=2, extra_args=["--prefetch", "0"], wait=False)
               for wid in ("wa", "wb")}
    for w in workers.values():
        w.wait_connected()
    api = coordinator.api()
    created = api.submit(SLOW_ITEM, list(range(30)), {"chunk_size": 10})
    task_id = created["id"]

    def leased_to() -> dict[str, list[dict[str, Any]]]:
        held: dict[str, list[dict[str, Any]]] = {}
        for c in api.chunks(task_id):
            if c["state"] == "leased":
                held.setdefault(c["worker"], []).append(c)
        return held

    held = wait_until(leased_to, 20, "all 3 chunks leased (2 to one worker, 1 to the other)",
                      ready=lambda h: sorted(map(len, h.values())) == [1, 2],
                      interval_s=0.02, watch=tuple(workers.values()))
    victim_id = next(wid for wid, chunks in held.items() if len(chunks) == 2)
    victim = workers[victim_id]
    survivor_id = next(wid for wid in workers if wid != victim_id)
    survivor = workers[survivor_id]
    victims_chunks = {c["index"]: c["lease_id"] for c in held[victim_id]}

    slot_children = children_of(victim.pid)
    assert slot_children, "the victim should run its chunks in child processes"
    killed_at = time.monotonic()
    victim.kill()

    def victims_chunks_now() -> list[dict[str, Any]]:
        return [c for c in api.chunks(task_id) if c["index"] in victims_chunks]

    moved = wait_until(victims_chunks_now, REASSIGN_BOUND_S + 5,
                       f"one of chunks {sorted(victims_chunks)} to be leased to {survivor_id}",
                       ready=lambda cs: any(c["worker"] == survivor_id
                                            and c["state"] in ("leased", "done") for c in cs),
                       interval_s=0.02, watch=(survivor,))
    seconds = time.monotonic() - killed_at
    first = next(c for c in moved if c["worker"] == survivor_id)
    print(f"\nSIGKILL -> chunk {first['index']} re-leased to another worker: {seconds:.2f} s "
          f"(grace {GRACE_MS} ms, lease {LEASE_MS} ms, tick {TICK_MS} ms)")
    assert seconds < REASSIGN_BOUND_S
    assert first["lease_id"] != victims_chunks[first["index"]]

    info = api.wait_state(task_id, timeout_s=30, watch=(survivor,))
    assert info["state"] == "completed", info
    assert info["chunks_done"] == 3 and info["items_done"] == 30
    assert api.results(task_id) == [{"item": i, "square": i * i} for i in range(30)]
    assert {c["worker"] for c in api.chunks(task_id)} == {survivor_id}
    # the victim's slot children died with it: no orphan keeps running customer code
    wait_until(lambda: alive(slot_children), 5, "the victim's slot children to exit",
               ready=lambda left: not left)
