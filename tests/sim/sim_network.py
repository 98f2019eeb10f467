"""The simulation's network: each session's order kept each way, delays, losses when it ends."""

from __future__ import annotations

import random
from collections.abc import Callable

from coordinator.core import effects as fx
from coordinator.core.events import SessionClosed
from schema.worker import CoordinatorMessage
from tests.sim.sim_model import Build, Conn, Down, SimWorker, _Close


class SimNetwork:
    """How messages travel between Sim's workers and its core; Sim sets the state."""

    rng: random.Random
    now: int
    gen: int
    conns: dict[str, Conn]
    at: Callable[..., None]
    handle: Callable[[Build], None]
    _on_message: Callable[[Conn, CoordinatorMessage | fx.AssignChunk], None]
    _connect: Callable[[SimWorker], None]

    def _delay(self, worker: SimWorker) -> int:
        r = self.rng.random()
        base = self.rng.randint(1, 20) if r < 0.9 else self.rng.randint(50, 600)
        if r > 0.995:
            base = self.rng.randint(1000, 3000)  # a long hiccup
        return max(self.now + base, worker.stalled_until)

    def _send_up(self, conn: Conn, build: Build) -> None:
        conn.up_at = max(conn.up_at, self._delay(conn.worker))
        self.at(conn.up_at, self._deliver_up, conn, build)

    def _deliver_up(self, conn: Conn, build: Build) -> None:
        if conn.alive and conn.gen == self.gen:
            self.handle(build)

    def _send_down(self, session_id: str, message: Down) -> None:
        conn = self.conns.get(session_id)
        if conn is None or not conn.alive:
            return  # the session is gone: the message is lost with it
        conn.down_at = max(conn.down_at, self._delay(conn.worker))
        self.at(conn.down_at, self._deliver_down, conn, message)

    def _deliver_down(self, conn: Conn, message: Down) -> None:
        if not conn.alive:
            return
        if isinstance(message, _Close):
            self._drop(conn)
        else:
            self._on_message(conn, message)

    def _drop(self, conn: Conn, *, notify_core: bool = True) -> None:
        """The connection ends: everything in flight on it is lost."""
        conn.alive = False
        worker = conn.worker
        if worker.conn is conn:
            worker.conn = None
        if notify_core and conn.gen == self.gen:
            # the adapter notices a little later and tells the core (a no-op if it closed it)
            self.at(self.now + self.rng.randint(0, 400), self._closed_event, conn)
        if not worker.gone:
            self.at(self.now + self.rng.randint(50, 1500), self._connect, worker)

    def _closed_event(self, conn: Conn) -> None:
        if conn.gen == self.gen:
            self.handle(lambda eid, at: SessionClosed(eid, at, conn.id, "connection closed"))
