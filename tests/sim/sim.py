"""A seeded, single-threaded simulation that drives the real ``Core`` with a fake clock.

Everything random comes from one ``random.Random(seed)``; time is an integer in ms moved by
a heap of scheduled actions, so a seed replays exactly. The pieces:

- **workers** with varied slots, speeds, failure rates and capabilities join, leave, stall
  (go silent), drop their connection and reconnect listing the leases they still hold;
  some ignore a revoke and send their result anyway (zombies);
- a **network** that keeps each session's order in each direction but delays delivery
  (sometimes by seconds); messages in flight are lost only when their session ends;
- **customers** submit and cancel tasks;
- a **store** that keeps the persisted rows, applies a batch of turns atomically (group
  commit, persistence before any message of those turns is sent, as the runtime does) and
  can crash the coordinator: uncommitted turns are lost, a fresh ``Core`` with the next epoch
  is rebuilt with ``restore_task``/``restore_accepted`` and every worker reconnects.

After every event the core handles, ``check_invariants`` runs and the effects are checked:
a chunk is accepted (persisted) at most once, only for a lease granted to that worker for
that chunk, and every ``accepted`` a worker receives names a durably persisted result.
At the end the chaos stops, everyone becomes reliable, and every task must finish.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import Tick
from coordinator.core.invariants import check_invariants
from coordinator.core.lifecycle import TERMINAL_TASK_STATES
from schema.worker import Accepted
from tests.sim.sim_chaos import SimChaos
from tests.sim.sim_checks import SimChecks
from tests.sim.sim_model import (
    ALL_CAPS,
    CLOSE,
    CONFIG,
    REQUIREMENTS,
    TICK_MS,
    Build,
    Conn,
    Down,
    Job,
    Params,
    RetryDeadlock,
    SimFailure,
    SimWorker,
    Spec,
    Stats,
    encode_output,
)
from tests.sim.sim_network import SimNetwork
from tests.sim.sim_store import Store
from tests.sim.sim_workers import SimWorkers

# what other modules import from here; the records are defined in sim_model, the store in
# sim_store
__all__ = [
    "ALL_CAPS",
    "CLOSE",
    "CONFIG",
    "REQUIREMENTS",
    "TICK_MS",
    "Build",
    "Conn",
    "Down",
    "Job",
    "Params",
    "RetryDeadlock",
    "Sim",
    "SimFailure",
    "SimWorker",
    "Spec",
    "Stats",
    "Store",
    "encode_output",
]


# The clock, the coordinator's turns, crashes and the drain are here; the checks, the
# network, the workers, and the chaos and customers are mixins (sim_checks, sim_network,
# sim_workers, sim_chaos).
class Sim(SimChecks, SimNetwork, SimWorkers, SimChaos):
    def __init__(self, seed: int, params: Params | None = None) -> None:
        self.seed = seed
        self.p = params or Params()
        self.rng = random.Random(seed)
        self.now = 0
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.epoch = 1
        self.gen = 0
        self.core = Core(CONFIG, self.epoch)
        self.store = Store()
        self.eid = 0
        self.uncommitted: list[list[fx.Effect]] = []
        self.uncommitted_results: set[tuple[str, int]] = set()
        self.commit_due = False
        self.draining = False
        self.end = 0
        self.conns: dict[str, Conn] = {}
        self.workers: list[SimWorker] = []
        self.specs: dict[str, Spec] = {}
        self.cancel_asked: set[str] = set()
        self.granted: dict[int, tuple[str, int, str]] = {}  # lease -> task, chunk, worker
        self.orphaned_since: dict[int, int] = {}  # lease -> when the core orphaned it
        self.failed_by: dict[tuple[str, int], set[str]] = {}  # chunk -> workers it failed on
        self._session_ids = 0
        self._task_ids = 0
        self._worker_ids = 0
        self.digest = hashlib.sha256()
        self.history: deque[str] = deque(maxlen=40)
        self.stats = Stats()

    # ---- the clock --------------------------------------------------------------------

    def at(self, when: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, fn, args))

    def run(self) -> Stats:
        try:
            self._start()
            self.end = self.p.chaos_ms + self.p.drain_ms
            while self._heap:
                when, _, fn, args = heapq.heappop(self._heap)
                if when > self.end:
                    break
                self.now = when
                if not self.draining and when >= self.p.chaos_ms:
                    self._start_drain()
                fn(*args)
                if self.draining and self._all_finished():
                    break
            self._final_checks()
        except RetryDeadlock as exc:
            raise RetryDeadlock(self._report(exc)) from exc
        except AssertionError as exc:
            raise SimFailure(self._report(exc)) from exc
        self.stats.sim_ms = self.now
        return self.stats

    def _report(self, exc: AssertionError) -> str:
        lines = "\n  ".join(self.history)
        again = (
            f"TN_SIM_SEED={self.seed} .venv/bin/pytest tests/sim -q -s -k test_sim_seed"
            if self.p == Params()
            else f"Sim({self.seed}, {self.p!r}).run()"
        )
        return (
            f"simulation seed {self.seed} broke at step {self.stats.steps}, t={self.now} ms, "
            f"epoch {self.epoch}: {exc}\n"
            f"reproduce: {again}\n"
            f"last events and effects:\n  {lines}"
        )

    def _start(self) -> None:
        for _ in range(self.rng.randint(*self.p.workers)):
            self.at(self.rng.randint(0, 2000), self._connect, self._new_worker())
        self.at(0, self._tick)
        self.at(self.rng.randint(0, 500), self._customer_submits)
        self.at(self.rng.randint(3000, 8000), self._customer_cancels)
        self.at(self.rng.randint(1000, 4000), self._chaos)
        self.at(self._exp(self.p.crash_every_ms), self._crash)

    def _exp(self, mean: float) -> int:
        return self.now + int(self.rng.expovariate(1 / mean))

    # ---- the coordinator side -----------------------------------------------------------

    def handle(self, build: Build) -> None:
        self.eid += 1
        event = build(self.eid, self.now)
        effects = self.core.handle(event)
        self.stats.steps += 1
        self.history.append(f"{self.now} ms  {event!r}")
        for e in effects:
            self.digest.update(msgspec.msgpack.encode(e, enc_hook=fx.in_full))
            if not isinstance(e, fx.TaskChanged):
                self.history.append(f"    -> {e!r}"[:300])
        check_invariants(self.core)
        self._check_effects(effects)
        self._count(effects)
        self._track_orphans()
        self.uncommitted.append(effects)
        if not self.commit_due:
            self.commit_due = True
            self.at(self.now + self.rng.choice((0, 0, 1, 2, 5, 20)), self._commit, self.gen)

    def _commit(self, gen: int) -> None:
        if gen != self.gen:
            return
        self.commit_due = False
        turns, self.uncommitted = self.uncommitted, []
        self.uncommitted_results.clear()
        for effects in turns:
            for e in effects:
                if isinstance(e, fx.PERSISTENT):
                    self.store.apply(e)
                    if self.draining:  # progress: the drain goes on
                        self.end = min(
                            max(self.end, self.now + self.p.drain_ms),
                            self.p.chaos_ms + self.p.drain_max_ms,
                        )
        for effects in turns:
            for e in effects:
                self._dispatch(e)

    def _dispatch(self, e: fx.Effect) -> None:
        match e:
            case fx.Send():
                if isinstance(e.message, Accepted):
                    row = self.store.by_lease.get(e.message.lease_id)
                    assert row is not None, (
                        f"accepted({e.message.lease_id}) sent without a persisted result"
                    )
                self._send_down(e.session_id, e.message)
            case fx.AssignChunk():
                self._send_down(e.session_id, e)
            case fx.CloseSession():
                # a close frame: it follows the messages already sent on the session
                self._send_down(e.session_id, CLOSE)
            case fx.Reply():
                pass  # customers learn the outcome from the core's task states at the end
            case _:
                pass

    def _tick(self) -> None:
        self.handle(lambda eid, at: Tick(eid, at))
        self._check_after_tick()
        self.at(self.now + TICK_MS, self._tick)

    def _crash(self) -> None:
        if self.draining:
            return
        self.stats.crashes += 1
        # killed between the commit and the sends half the time: persisted, never acknowledged
        if self.uncommitted and self.rng.random() < 0.5:
            for effects in self.uncommitted:
                for e in effects:
                    if isinstance(e, fx.PERSISTENT):
                        self.store.apply(e)
        self.history.append(f"{self.now} ms  CRASH; {len(self.uncommitted)} turns in flight")
        self.uncommitted = []
        self.uncommitted_results.clear()
        self.commit_due = False
        self.gen += 1
        self.epoch += 1
        self.core = Core(CONFIG, self.epoch)
        self.store.restore(self.core)
        check_invariants(self.core)
        self.orphaned_since = {}
        for conn in list(self.conns.values()):
            if conn.alive:
                self._drop(conn, notify_core=False)
        self.at(self._exp(self.p.crash_every_ms), self._crash)

    # ---- the end ------------------------------------------------------------------------

    def _start_drain(self) -> None:
        self.draining = True
        self.history.append(f"{self.now} ms  DRAIN")
        for worker in self.workers:
            if self.p.drain_reliable:
                worker.fail_rate = worker.bad_rate = worker.hang_rate = worker.zombie_rate = 0.0
            worker.stalled_until = min(worker.stalled_until, self.now)
        for _ in range(self.p.fresh_drain_workers):
            self._connect(self._new_worker(reliable=True))

    def _all_finished(self) -> bool:
        return not self.uncommitted and all(
            t.state in TERMINAL_TASK_STATES for t in self.core.tasks.values()
        )
