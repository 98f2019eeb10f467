"""Unit tests of the pure core's invariant checker and of its scale.

A million-chunk task stays fast and small, and ``check_invariants`` catches each of a list
of hand-made corruptions of a busy core.

Events are built by hand (eid and at_ms written out) with the helpers of ``core_steps``;
every event goes through ``step``, which checks the core's invariants afterwards.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from collections.abc import Callable

import pytest

from coordinator.core.core import Core
from coordinator.core.events import FailIn, SessionClosed, Tick
from coordinator.core.invariants import check_invariants
from coordinator.core.lifecycle import ChunkState, TaskState
from tests.core.core_steps import ACCT, CFG, assigns, hello, lid, result, step, submit

# ---- scale ------------------------------------------------------------------------------


def test_million_chunk_task_is_handled_fast_and_small() -> None:
    core = Core(CFG, epoch=1)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        effects = core.handle(submit(1, 0, items=1_000_000, chunk_size=1))
        submitted = time.perf_counter() - start
        effects += core.handle(hello(2, 0, "s1", slots=8))
        effects += core.handle(result(3, 10, "s1", lid(1), 1))
        effects += core.handle(Tick(4, 20))
        handled = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    start = time.perf_counter()
    check_invariants(core)
    checked = time.perf_counter() - start
    print(
        f"\n1,000,000-chunk task: submit {submitted * 1e3:.1f} ms, submit+hello+result+tick "
        f"{handled * 1e3:.1f} ms, check_invariants {checked * 1e3:.1f} ms, "
        f"peak traced memory {peak / 1e6:.2f} MB"
    )
    task = core.tasks["t1"]
    assert len(task.chunk_state) == 1_000_000
    assert len(task.requeue) == 0
    assert (task.leased, task.done, task.cursor) == (8, 1, 9)
    assert len(assigns(effects)) == 9
    # one byte per chunk; a Python object per chunk would cost tens of MB
    assert peak < 4_000_000, f"peak {peak} bytes: per-chunk objects?"


# ---- the invariant checker itself ---------------------------------------------------------


def _busy_core() -> Core:
    core = Core(CFG, epoch=1)
    step(core, submit(1, 0, "t1", items=12, max_concurrency=3))
    step(core, submit(2, 0, "t2", items=2))
    step(core, hello(3, 0, "s1", "w1", slots=2))  # t1/0 as lid(1), t2/0 as lid(2)
    step(core, hello(4, 0, "s2", "w2", slots=2))  # t1/1 and t1/2: t1 is at its cap
    step(core, result(5, 10, "s1", lid(2)))  # t2 is complete
    step(core, FailIn(6, 20, "s1", lid(1), "boom", True))  # t1/0 waits for w2; s1 takes t1/3
    task = core.tasks["t1"]
    assert (list(task.requeue), task.leased, core.tasks["t2"].state) == (
        [0], 3, TaskState.COMPLETED,
    )
    return core


def _corrupt_lease_session(core: Core) -> None:
    core.leases[min(core.sessions["s1"].leases)].session_id = "s2"


def _second_lease_for_a_chunk(core: Core) -> None:
    core.leases[999] = dataclasses.replace(core.leases[min(core.leases)], id=999)


def _orphan_not_indexed(core: Core) -> None:
    core.handle(SessionClosed(99, 30, "s2"))
    check_invariants(core)
    core.orphans.clear()


CORRUPTIONS: dict[str, Callable[[Core], object]] = {
    "done counter": lambda c: setattr(c.tasks["t1"], "done", c.tasks["t1"].done + 1),
    "chunk byte": lambda c: c.tasks["t1"].chunk_state.__setitem__(5, ChunkState.DONE),
    "bad byte": lambda c: c.tasks["t1"].chunk_state.__setitem__(5, 7),
    "lease to pending chunk": lambda c: c.tasks["t1"].chunk_state.__setitem__(
        c.leases[min(c.leases)].chunk, ChunkState.PENDING),
    "slots exceeded": lambda c: setattr(c.sessions["s2"], "slots", 0),
    "lease in two sessions": lambda c: c.sessions["s2"].leases.update(c.sessions["s1"].leases),
    "lease session mismatch": _corrupt_lease_session,
    "second lease for a chunk": _second_lease_for_a_chunk,
    "requeue duplicate": lambda c: c.tasks["t1"].requeue.append(c.tasks["t1"].requeue[0]),
    "requeue past cursor": lambda c: c.tasks["t1"].requeue.append(c.tasks["t1"].cursor + 1),
    "requeue lost": lambda c: c.tasks["t1"].requeue.clear(),
    "concurrency cap": lambda c: setattr(c.tasks["t1"], "max_concurrency", 1),
    "terminal with leases": lambda c: setattr(c.tasks["t1"], "state", TaskState.CANCELLED),
    "finished but running": lambda c: setattr(c.tasks["t2"], "state", TaskState.RUNNING),
    "not runnable": lambda c: c.sched.runnable.clear(),
    "orphan of a live worker": lambda c: setattr(c.leases[min(c.leases)], "session_id", None),
    "lease from a later epoch": lambda c: c.leases.__setitem__(
        lid(1, epoch=2), dataclasses.replace(c.leases[min(c.leases)], id=lid(1, epoch=2))),
    "orphan not indexed": _orphan_not_indexed,
    "stale orphan index": lambda c: c.orphans.setdefault(f"{ACCT}/w2", set()).add(lid(3)),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_check_invariants_catches(corrupt: str) -> None:
    core = _busy_core()
    check_invariants(core)
    CORRUPTIONS[corrupt](core)
    with pytest.raises(AssertionError):
        check_invariants(core)
