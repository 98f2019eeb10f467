"""The simulation's chaos and customers: workers leave, drop, stall and forge; tasks come and go."""

from __future__ import annotations

import random
from collections.abc import Callable

from coordinator.core.core import Core
from coordinator.core.events import ResultIn, TaskCancel, TaskSubmitted
from tests.sim.sim_model import (
    REQUIREMENTS,
    Build,
    Conn,
    Params,
    SimWorker,
    Spec,
    Stats,
    encode_output,
)


class SimChaos:
    """What misbehaves during Sim's chaos phase, and what its customers ask; Sim sets the state."""

    p: Params
    rng: random.Random
    now: int
    draining: bool
    core: Core
    workers: list[SimWorker]
    specs: dict[str, Spec]
    cancel_asked: set[str]
    granted: dict[int, tuple[str, int, str]]
    stats: Stats
    _task_ids: int
    at: Callable[..., None]
    handle: Callable[[Build], None]
    _connect: Callable[[SimWorker], None]
    _new_worker: Callable[[], SimWorker]
    _drop: Callable[[Conn], None]
    _send_up: Callable[[Conn, Build], None]

    def _chaos(self) -> None:
        if self.draining:
            return
        rng = self.rng
        live = [w for w in self.workers if not w.gone]
        r = rng.random()
        if (r < 0.25 or not live) and self.p.membership_changes:
            self._connect(self._new_worker())
        elif live:
            worker = live[rng.randrange(len(live))]
            if r < 0.4 and not self.p.membership_changes:
                pass
            elif r < 0.4:  # leaves for good; its leases are orphaned, then requeued
                worker.gone = True
                if worker.conn is not None:
                    self._drop(worker.conn)
            elif r < 0.7:  # the connection drops; the worker reconnects with its leases
                if worker.conn is not None:
                    self._drop(worker.conn)
            elif r < 0.8 and worker.conn is not None and worker.conn.welcomed and self.granted:
                self._forge_result(worker, worker.conn)
            else:  # goes silent: short stalls survive, long ones get the session closed
                worker.stalled_until = self.now + rng.choice(
                    (rng.randint(200, 2000), rng.randint(3000, 9000))
                )
        self.at(self.now + rng.randint(200, 1500), self._chaos)

    def _foreign_lease(self, worker: SimWorker) -> int:
        """Some lease granted to another worker (a forger's or a confused peer's pick)."""
        live = [x for x in self.core.leases if x in self.granted]
        leases = live if live and self.rng.random() < 0.7 else list(self.granted)
        for _ in range(5):
            lease_id = leases[self.rng.randrange(len(leases))]
            if self.granted[lease_id][2] != worker.key:
                return lease_id
        return 1 << 60  # a lease nobody ever had

    def _forge_result(self, worker: SimWorker, conn: Conn) -> None:
        """A malicious peer claims another worker's chunk with a well-formed result."""
        lease_id = self._foreign_lease(worker)
        task_id, chunk, _ = self.granted.get(lease_id, ("?", 0, ""))
        spec = self.specs.get(task_id)
        body = encode_output(spec.items_in(chunk) if spec else 1)
        self._send_up(conn, lambda eid, at: ResultIn(eid, at, conn.id, lease_id, body, "x"))

    def _customer_submits(self) -> None:
        if self.draining:
            return
        rng = self.rng
        self._task_ids += 1
        task_id = f"t{self._task_ids}"
        big = rng.random() < 0.05
        chunk_size = rng.randint(1, 8)
        items = rng.randint(200, 1000) if big else rng.randint(1, 60)
        spec = Spec(task_id, items, chunk_size, -(-items // chunk_size))
        self.specs[task_id] = spec
        reqs = [r for r in REQUIREMENTS if rng.random() < 0.2]
        ev = dict(
            max_concurrency=rng.randint(6, 30) if big else rng.randint(1, 8),
            max_attempts=rng.randint(1, 4),
            timeout=rng.randint(1000, 6000),
        )
        self.stats.tasks += 1
        self.handle(lambda eid, at: TaskSubmitted(
            eid, at, task_id, f"cust{rng.randint(1, 3)}", f"job {task_id}", spec.chunks,
            spec.items, spec.chunk_size, ev["max_concurrency"], ev["max_attempts"],
            ev["timeout"], reqs, f"code-{task_id}",
        ))
        self.at(self.now + rng.randint(100, 2500), self._customer_submits)

    def _customer_cancels(self) -> None:
        if self.draining:
            return
        if self.specs:
            task_id = self.rng.choice(list(self.specs))
            self.cancel_asked.add(task_id)
            self.handle(lambda eid, at: TaskCancel(eid, at, task_id, "customer changed plans"))
        self.at(self.now + self.rng.randint(2000, 10_000), self._customer_cancels)
