"""The simulated workers: joining, connecting, running chunks, replying, heartbeats."""

from __future__ import annotations

import random
from collections.abc import Callable

from coordinator.core import effects as fx
from coordinator.core.events import FailIn, HeartbeatIn, ProgressIn, ResultIn, SessionHello
from schema.worker import (
    PROTOCOL_VERSION,
    Accepted,
    CoordinatorMessage,
    Error,
    Rejected,
    Revoke,
    Welcome,
)
from tests.sim.sim_model import (
    ALL_CAPS,
    CONFIG,
    Build,
    Conn,
    Job,
    Params,
    SimWorker,
    Spec,
    Stats,
    encode_output,
)
from tests.sim.sim_store import Store


class SimWorkers:
    """What Sim's workers do with what the coordinator sends them; Sim sets the state."""

    p: Params
    rng: random.Random
    now: int
    gen: int
    draining: bool
    store: Store
    conns: dict[str, Conn]
    workers: list[SimWorker]
    specs: dict[str, Spec]
    granted: dict[int, tuple[str, int, str]]
    stats: Stats
    _session_ids: int
    _worker_ids: int
    at: Callable[..., None]
    _send_up: Callable[[Conn, Build], None]
    _foreign_lease: Callable[[SimWorker], int]

    def _new_worker(self, *, reliable: bool = False) -> SimWorker:
        rng = self.rng
        self._worker_ids += 1
        gone = [w for w in self.workers if w.gone]
        if gone and not reliable and rng.random() < 0.3:
            account, worker_id = gone[rng.randrange(len(gone))].key.split("/")  # a restart
        else:
            account, worker_id = f"acct{rng.randint(1, 4)}", f"w{self._worker_ids}"
        if reliable or self.p.all_caps:
            caps = list(ALL_CAPS)
        else:
            caps = [c for c in ("gpu", "mem_gb=32", "region=us") if rng.random() < 0.5]
            caps += [rng.choice(["python=3.9", "python=3.11", "python=3.12"])]
            caps += ["mem_gb=4"] if "mem_gb=32" not in caps and rng.random() < 0.5 else []
            caps += ["region=eu"] if "region=us" not in caps and rng.random() < 0.5 else []
        worker = SimWorker(
            account, worker_id, slots=rng.randint(1, 6), ms_per_item=rng.randint(5, 250),
            fail_rate=0.0 if reliable else rng.choice(self.p.fail_rates),
            bad_rate=0.0 if reliable else rng.choice((0.0, 0.02)),
            hang_rate=0.0 if reliable else rng.choice((0.0, 0.02)),
            zombie_rate=0.0 if reliable else rng.choice((0.0, 0.3)),
            caps=caps, prefetch=rng.choice((0, 0, 1, 2)),
            protocol=PROTOCOL_VERSION + (not reliable and rng.random() < 0.03),
        )
        self.workers.append(worker)
        self.stats.workers += 1
        return worker

    def _connect(self, worker: SimWorker) -> None:
        if worker.gone or worker.conn is not None:
            return
        self._session_ids += 1
        conn = Conn(f"s{self._session_ids}", worker, self.gen)
        self.conns[conn.id] = conn
        worker.conn = conn
        held = list(worker.jobs)
        if self.granted and not self.draining and self.rng.random() < 0.1:
            held.append(self._foreign_lease(worker))  # a forged claim: must not be resumed
        caps, slots, protocol = list(worker.caps), worker.slots, worker.protocol
        self._send_up(conn, lambda eid, at: SessionHello(
            eid, at, conn.id, worker.account, worker.worker_id, caps, slots, held, protocol,
            prefetch=worker.prefetch,
        ))

    def _on_message(self, conn: Conn, message: CoordinatorMessage | fx.AssignChunk) -> None:
        worker = conn.worker
        match message:
            case Welcome():
                assert not conn.welcomed, f"second welcome on {conn.id}"
                conn.welcomed = True
                for lease_id in message.resumed:
                    owner = self.granted.get(lease_id, ("", 0, "nobody"))[2]
                    assert owner == worker.key, (
                        f"{worker.key} resumed lease {lease_id} of {owner} (fencing)"
                    )
                for lease_id in message.dropped:
                    worker.jobs.pop(lease_id, None)
                    mine = self.granted.get(lease_id, ("", 0, ""))[2] == worker.key
                    assert not (mine and lease_id in self.store.by_lease), (
                        f"{worker.key}'s lease {lease_id} was dropped, but its result is "
                        "persisted: a re-send would be accepted"
                    )
                for job in list(worker.jobs.values()):
                    if job.reply is not None:
                        self._reply(worker, job)
                self.at(self.now + CONFIG.heartbeat_ms, self._heartbeat, conn)
            case fx.AssignChunk():
                assert conn.welcomed, "assign before welcome"
                assert message.lease_id not in worker.jobs, f"lease {message.lease_id} twice"
                self._start_job(worker, message)
            case Accepted():
                acked = worker.jobs.pop(message.lease_id, None)
                row = self.store.by_lease.get(message.lease_id)
                assert row is not None, f"worker got accepted({message.lease_id}), not stored"
                owner = self.granted[message.lease_id][2]
                assert owner == worker.key, (
                    f"{worker.key} got accepted({message.lease_id}) for a lease of {owner}"
                )
                if acked is not None:
                    assert acked.reply is not None and acked.reply[0] == "result"
                    assert acked.outcome == "ok", f"accepted a {acked.outcome} result"
                    assert (row.task_id, row.chunk_index) == (acked.task_id, acked.chunk)
                    self.stats.accepted_seen += 1
            case Rejected():
                worker.jobs.pop(message.lease_id, None)
                mine = self.granted.get(message.lease_id, ("", 0, ""))[2] == worker.key
                assert not (mine and message.lease_id in self.store.by_lease), (
                    f"{worker.key} was told rejected({message.lease_id}: {message.reason}) "
                    "for its own result, which is persisted"
                )
            case Revoke():
                held = worker.jobs.get(message.lease_id)
                running = held is not None and held.reply is None
                if held is not None and running and self.rng.random() < worker.zombie_rate:
                    held.zombie = True  # keeps running and will send its result regardless
                else:
                    worker.jobs.pop(message.lease_id, None)
            case Error():
                assert message.fatal and worker.protocol != PROTOCOL_VERSION, message.reason
                worker.gone = True  # a fatal error: this worker gives up
            case _:
                raise AssertionError(f"unexpected message {message!r}")

    def _start_job(self, worker: SimWorker, a: fx.AssignChunk) -> None:
        rng = self.rng
        items = self.specs[a.task_id].items_in(a.chunk_index)
        r = rng.random()
        outcome = "ok"
        if r < worker.fail_rate:
            outcome = "fatal" if rng.random() < 0.1 else "fail"
        elif r < worker.fail_rate + worker.bad_rate:
            outcome = "bad"
        elif r < worker.fail_rate + worker.bad_rate + worker.hang_rate:
            outcome = "hang"
        job = Job(a.lease_id, a.task_id, a.chunk_index, items, outcome)
        worker.jobs[a.lease_id] = job
        if outcome == "hang":
            return
        duration = int(items * worker.ms_per_item * rng.uniform(0.5, 1.5)) + rng.randint(1, 50)
        if rng.random() < 0.3:
            self.at(self.now + duration // 2, self._progress, worker, job)
        self.at(self.now + duration, self._finish_job, worker, job)

    def _progress(self, worker: SimWorker, job: Job) -> None:
        conn = worker.conn
        if worker.jobs.get(job.lease_id) is job and conn is not None and conn.welcomed:
            self._send_up(conn, lambda eid, at: ProgressIn(
                eid, at, conn.id, job.lease_id, job.items // 2, job.items,
            ))

    def _finish_job(self, worker: SimWorker, job: Job) -> None:
        if worker.jobs.get(job.lease_id) is not job or worker.gone:
            return
        if job.outcome == "ok":
            job.reply = ("result", encode_output(job.items))
        elif job.outcome == "bad":
            job.reply = ("result", encode_output(job.items + 1))
        else:
            job.reply = ("fail", (f"{job.outcome} on {worker.key}", job.outcome == "fail"))
        self._reply(worker, job)
        if job.zombie:
            worker.jobs.pop(job.lease_id, None)

    def _reply(self, worker: SimWorker, job: Job) -> None:
        conn = worker.conn
        if conn is None or not conn.welcomed or job.reply is None:
            return  # kept in the job; re-sent after the next welcome
        kind, body = job.reply
        lease_id = job.lease_id
        if kind == "result":
            self.stats.results += 1
            self._send_up(conn, lambda eid, at: ResultIn(
                eid, at, conn.id, lease_id, body, f"sha-{lease_id}",
            ))
        else:
            error, retryable = body
            self._send_up(conn, lambda eid, at: FailIn(
                eid, at, conn.id, lease_id, error, retryable,
            ))

    def _heartbeat(self, conn: Conn) -> None:
        if not conn.alive or conn.worker.conn is not conn:
            return
        self._send_up(conn, lambda eid, at: HeartbeatIn(eid, at, conn.id))
        jitter = self.rng.randint(-200, 200)
        self.at(self.now + CONFIG.heartbeat_ms + jitter, self._heartbeat, conn)
