"""The seeded market: many workers and customers drive the real ``Core`` on a fake clock."""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core
from coordinator.core.events import (
    Deposit,
    FailIn,
    HeartbeatIn,
    ResultIn,
    SessionClosed,
    SessionHello,
    TaskCancel,
    TaskFund,
    TaskPause,
    TaskResume,
    TaskSubmitted,
    TaskUpdate,
    Tick,
    WhyIdleIn,
)
from coordinator.core.invariants import check_invariants
from coordinator.core.lifecycle import TERMINAL_TASK_STATES, ChunkState, TaskState
from schema.worker import (
    PROTOCOL_VERSION,
    Accepted,
    CoordinatorMessage,
    Error,
    Idle,
    Rejected,
    Revoke,
    Welcome,
)
from tests.sim.market_model import (
    CAPS_POOL,
    CONFIG,
    CUSTOMERS,
    REQUIREMENTS,
    SAMPLE_MS,
    Build,
    Conn,
    Fairness,
    Job,
    MarketWorker,
    Params,
    Spec,
    Stats,
    event,
    right_output,
    wrong_output,
)
from tests.sim.sim_model import TICK_MS, SimFailure


class MarketSim:
    def __init__(self, seed: int, params: Params | None = None) -> None:
        self.seed = seed
        self.p = params or Params()
        self.rng = random.Random(seed)
        self.core = Core(CONFIG, epoch=1)
        self.now = 0
        self.eid = 0
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.draining = False
        self.workers: list[MarketWorker] = []
        self.conns: dict[str, Conn] = {}
        self.specs: dict[str, Spec] = {}
        self.accepted: set[tuple[str, int]] = set()
        self.corrupted: set[int] = set()  # leases whose result carried a wrong output
        self.payouts: Counter[tuple[str, int]] = Counter()
        self.paid_leases: set[int] = set()
        self.fairness = Fairness()
        self.stats = Stats()
        self.digest = hashlib.sha256()
        self.history: deque[str] = deque(maxlen=30)
        self._ids = 0

    # ---- the clock ----------------------------------------------------------------------

    def at(self, when: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, fn, args))

    def run(self) -> Stats:
        try:
            self._start()
            end = self.p.chaos_ms + self.p.drain_max_ms
            while self._heap:
                when, _, fn, args = heapq.heappop(self._heap)
                if when > end:
                    break
                self.now = when
                if not self.draining and when >= self.p.chaos_ms:
                    self._start_drain()
                fn(*args)
                if self.draining and self._all_finished():
                    break
            self._final_checks()
        except AssertionError as exc:
            lines = "\n  ".join(self.history)
            raise SimFailure(
                f"market seed {self.seed} broke at step {self.stats.steps}, t={self.now} ms: "
                f"{exc}\nreproduce: TN_MARKET_SEED={self.seed} .venv/bin/pytest "
                f"tests/sim/test_sim_market.py -q -s\nlast events and effects:\n  {lines}"
            ) from exc
        self.stats.sim_ms = self.now
        self.stats.fairness = self.fairness.worst()
        return self.stats

    def _start(self) -> None:
        for customer in (*CUSTOMERS, "fair-a", "fair-b"):
            self.handle(event(Deposit, customer, 10**12, f"dep-{customer}", "sandbox"))
        self._submit_pair()
        for _ in range(self.p.workers):
            self.at(self.rng.randint(0, 3000), self._connect, self._new_worker())
        self.at(0, self._tick)
        self.at(5000, self._sample)
        self.at(200, self._customer)
        self.at(1000, self._chaos)

    # ---- the coordinator ----------------------------------------------------------------

    def handle(self, build: Build) -> list[fx.Effect]:
        self.eid += 1
        event = build(self.eid, self.now)
        effects = self.core.handle(event)
        self.stats.steps += 1
        self.history.append(f"{self.now} ms  {event!r}"[:300])
        for e in effects:
            self.digest.update(msgspec.msgpack.encode(e, enc_hook=fx.in_full))
            if not isinstance(e, fx.TaskChanged):
                self.history.append(f"    -> {e!r}"[:300])
        check_invariants(self.core)
        self._check(effects)
        for e in effects:
            self._dispatch(e)
        return effects

    def _check(self, effects: list[fx.Effect]) -> None:
        core = self.core
        for e in effects:
            match e:
                case fx.AssignChunk():
                    key = (e.task_id, e.chunk_index)
                    assert key not in self.accepted, f"chunk {key} assigned after acceptance"
                    account = core.sessions[e.session_id].account_id
                    voters = [v.account_id for v in core.tasks[e.task_id].votes.get(
                        e.chunk_index, ())]
                    assert account not in voters, (
                        f"chunk {key} assigned to {account}, which already voted: {voters}")
                case fx.PersistResult():
                    key = (e.task_id, e.chunk_index)
                    assert key not in self.accepted, f"chunk {key} accepted twice"
                    self.accepted.add(key)
                    spec = self.specs[e.task_id]
                    if e.output != right_output(e.task_id, e.chunk_index, e.items):
                        assert spec.verification != "quorum", (
                            f"quorum task accepted the wrong output of lease {e.lease_id} "
                            f"for chunk {key}")
                        self.stats.wrong_accepted[spec.verification] += 1
                case fx.PersistTransfer(kind="payout"):
                    assert e.task_id is not None and e.chunk is not None
                    assert e.lease_id is not None and e.lease_id not in self.paid_leases, (
                        f"lease {e.lease_id} paid twice")
                    self.paid_leases.add(e.lease_id)
                    spec = self.specs[e.task_id]
                    assert not (e.lease_id in self.corrupted and spec.verification == "quorum"), (
                        f"lease {e.lease_id} paid for a wrong output of quorum task "
                        f"{e.task_id} (chunk {e.chunk})")
                    self.payouts[(e.task_id, e.chunk)] += 1
                    agree = {"quorum": 2, "spot": 2, "none": 1}[spec.verification]
                    assert self.payouts[(e.task_id, e.chunk)] <= agree, (
                        f"chunk {e.task_id}/{e.chunk} paid {self.payouts[(e.task_id, e.chunk)]}"
                        f" times under {spec.verification}")
                case fx.PersistFailure(final=True):
                    spec = self.specs[e.task_id]
                    if e.error.startswith("poison"):
                        if e.chunk_index in spec.poison:
                            self.stats.poison_failed += 1
                        else:
                            self.stats.false_poison += 1
                case fx.PersistTaskState(state=state):
                    self.stats.seen[f"task {state}"] += 1
                case fx.Send(message=Rejected(reason=why)):
                    self.stats.seen[f"rejected: {why[:20]}"] += 1
                case fx.Send(message=Revoke()):
                    self.stats.seen["revoke"] += 1
                case fx.CloseSession(code=code):
                    self.stats.seen[f"close {code}"] += 1
                case _:
                    pass

    def _dispatch(self, e: fx.Effect) -> None:
        match e:
            case fx.Send():
                self._send_down(e.session_id, e.message)
            case fx.AssignChunk():
                self._send_down(e.session_id, e)
            case fx.CloseSession():
                self._send_down(e.session_id, None)
            case fx.Reply(ok=False, status=status):
                assert status in (402, 404, 409), f"unexpected refusal {e!r}"
            case _:
                pass

    def _tick(self) -> None:
        self.handle(lambda eid, at: Tick(eid, at))
        for key in list(self.core.trust.workers):
            if self.core.trust.lease_limit(key, self.now) == 0:
                self.stats.seen["quarantined worker-ticks"] += 1
        self.at(self.now + TICK_MS, self._tick)

    def _sample(self) -> None:
        if self.draining:
            return
        pair = [self.core.tasks[t] for t in ("fa-hi", "fa-lo", "fb")]
        assert all(t.pending > 0 for t in pair), "the fairness pair ran out of work"
        self.fairness.samples.append((pair[0].leased, pair[1].leased, pair[2].leased))
        self.at(self.now + SAMPLE_MS, self._sample)

    # ---- the network --------------------------------------------------------------------

    def _delay(self, worker: MarketWorker) -> int:
        r = self.rng.random()
        base = self.rng.randint(1, 15) if r < 0.95 else self.rng.randint(30, 400)
        return max(self.now + base, worker.stalled_until)

    def _send_up(self, conn: Conn, build: Build) -> None:
        conn.up_at = max(conn.up_at, self._delay(conn.worker))
        conn.last_up = self.now
        self.at(conn.up_at, self._deliver_up, conn, build)

    def _deliver_up(self, conn: Conn, build: Build) -> None:
        if conn.alive:
            self.handle(build)

    def _send_down(self, session_id: str, message: CoordinatorMessage | fx.AssignChunk | None
                   ) -> None:
        conn = self.conns.get(session_id)
        if conn is None or not conn.alive:
            return
        conn.down_at = max(conn.down_at, self._delay(conn.worker))
        self.at(conn.down_at, self._deliver_down, conn, message)

    def _deliver_down(self, conn: Conn, message: CoordinatorMessage | fx.AssignChunk | None
                      ) -> None:
        if not conn.alive:
            return
        if message is None:
            self._drop(conn)
        else:
            self._on_message(conn, message)

    def _drop(self, conn: Conn) -> None:
        conn.alive = False
        worker = conn.worker
        if worker.conn is conn:
            worker.conn = None
        self.at(self.now + self.rng.randint(0, 300), self._closed, conn)
        if not worker.gone:
            self.at(self.now + self.rng.randint(50, 1500), self._connect, worker)

    def _closed(self, conn: Conn) -> None:
        self.handle(lambda eid, at: SessionClosed(eid, at, conn.id, "connection closed"))

    # ---- workers ------------------------------------------------------------------------

    def _new_worker(self, *, reliable: bool = False) -> MarketWorker:
        rng = self.rng
        self._ids += 1
        if self.workers and not reliable and rng.random() < self.p.shared_accounts:
            account = rng.choice(self.workers).account  # a second machine of an account
        else:
            account = f"acct{self._ids}"
        liar = not reliable and rng.random() < self.p.liars
        caps = ["python=" + rng.choice(("3.10", "3.11", "3.12"))]
        caps += [c for c in CAPS_POOL if rng.random() < 0.5]
        if reliable:
            caps = ["python=3.12", *CAPS_POOL]
        worker = MarketWorker(
            account, f"w{self._ids}", slots=rng.choice((1, 1, 2, 2, 3, 4)),
            prefetch=rng.choice((0, 0, 1)), ms_per_item=rng.randint(300, 2000),
            fail_rate=0.0 if reliable else rng.choice((0.0, 0.0, 0.0, 0.02, 0.05, 0.15)),
            lie_rate=rng.choice((0.5, 1.0)) if liar else 0.0,
            flaky_net=not reliable and rng.random() < 0.2, caps=caps,
        )
        self.workers.append(worker)
        self.stats.workers += 1
        return worker

    def _connect(self, worker: MarketWorker) -> None:
        if worker.gone or worker.conn is not None:
            return
        self._ids += 1
        conn = Conn(f"s{self._ids}", worker)
        self.conns[conn.id] = conn
        worker.conn = conn
        held, caps = list(worker.jobs), list(worker.caps)
        self._send_up(conn, lambda eid, at: SessionHello(
            eid, at, conn.id, worker.account, worker.worker_id, caps, worker.slots, held,
            PROTOCOL_VERSION, prefetch=worker.prefetch))

    def _on_message(self, conn: Conn, message: CoordinatorMessage | fx.AssignChunk) -> None:
        worker = conn.worker
        match message:
            case Welcome():
                conn.welcomed = True
                for lease_id in message.dropped:
                    worker.jobs.pop(lease_id, None)
                for job in list(worker.jobs.values()):
                    if job.reply is not None:
                        self._reply(worker, job)
                self.at(self.now + CONFIG.heartbeat_ms, self._heartbeat, conn)
            case fx.AssignChunk():
                job = Job(message.lease_id, message.task_id, message.chunk_index)
                worker.jobs[job.lease_id] = job
                items = self.specs[job.task_id].items_in(job.chunk)
                took = int(items * worker.ms_per_item * self.rng.uniform(0.6, 1.4))
                self.at(self.now + took, self._finish, worker, job)
            case Accepted() | Rejected() | Revoke():
                worker.jobs.pop(message.lease_id, None)
            case Idle():
                assert message.reasons and all(isinstance(r, str) for r in message.reasons)
                self.stats.seen["idle: " + message.reasons[0].split(":")[0][:30]] += 1
            case Error():
                raise AssertionError(f"{worker.key} got an error: {message.reason}")
            case _:
                raise AssertionError(f"unexpected message {message!r}")

    def _finish(self, worker: MarketWorker, job: Job) -> None:
        if worker.jobs.get(job.lease_id) is not job or worker.gone:
            return
        spec = self.specs[job.task_id]
        items = spec.items_in(job.chunk)
        if job.chunk in spec.poison:
            job.reply = ("fail", f"item {job.chunk * spec.chunk_size} crashes the code")
        elif self.rng.random() < worker.fail_rate:
            job.reply = ("fail", f"out of memory on {worker.key}")
        elif self.rng.random() < worker.lie_rate:
            self.corrupted.add(job.lease_id)
            self.stats.corrupted_sent += 1
            job.reply = ("result", wrong_output(job.task_id, job.chunk, items, job.lease_id))
        else:
            job.reply = ("result", right_output(job.task_id, job.chunk, items))
        self._reply(worker, job)

    def _reply(self, worker: MarketWorker, job: Job) -> None:
        conn = worker.conn
        if conn is None or not conn.welcomed or job.reply is None:
            return  # kept; re-sent after the next welcome
        kind, body = job.reply
        lease_id = job.lease_id
        if kind == "result":
            self.stats.results += 1
            digest = hashlib.sha256(body).hexdigest()
            self._send_up(conn, lambda eid, at: ResultIn(eid, at, conn.id, lease_id, body,
                                                         digest))
        else:
            self._send_up(conn, lambda eid, at: FailIn(eid, at, conn.id, lease_id, body, True))

    def _heartbeat(self, conn: Conn) -> None:
        if not conn.alive or conn.worker.conn is not conn:
            return
        if self.now - conn.last_up >= 1000:  # any message keeps a session alive
            if not conn.worker.jobs and self.rng.random() < 0.05:
                self._send_up(conn, lambda eid, at: WhyIdleIn(eid, at, conn.id))
            else:
                self._send_up(conn, lambda eid, at: HeartbeatIn(eid, at, conn.id))
        self.at(self.now + CONFIG.heartbeat_ms + self.rng.randint(-200, 200), self._heartbeat,
                conn)

    # ---- customers and chaos ------------------------------------------------------------

    def _submit(self, spec: Spec, *, priority: int, cap: int, attempts: int,
                reqs: list[str], budget: int, k: int, m: int, spot: int) -> None:
        self.specs[spec.task_id] = spec
        self.stats.tasks += 1
        [reply] = [e for e in self.handle(lambda eid, at: TaskSubmitted(
            eid, at, spec.task_id, spec.owner, spec.task_id, spec.chunks, spec.items,
            spec.chunk_size, cap, attempts, 120_000, reqs, f"code-{spec.task_id}",
            spec.price, budget, 0, priority, spec.verification, k, m, spot,
            f"salt-{spec.task_id}")) if isinstance(e, fx.Reply)]
        assert reply.ok, reply

    def _submit_pair(self) -> None:
        for task_id, owner, priority in (("fa-hi", "fair-a", 8), ("fa-lo", "fair-a", 2),
                                         ("fb", "fair-b", 5)):
            spec = Spec(task_id, owner, 48_000, 6, 8_000, "none", 0, frozenset())
            self._submit(spec, priority=priority, cap=10_000, attempts=5, reqs=[], budget=0,
                         k=1, m=1, spot=0)

    def _customer(self) -> None:
        if self.draining:
            return
        rng = self.rng
        self._ids += 1
        task_id = f"t{self._ids}"
        chunk_size = rng.randint(1, 6)
        items = rng.randint(10, 400)
        chunks = -(-items // chunk_size)
        verification = rng.choice(("none", "none", "spot", "quorum", "quorum"))
        k, m = (3, 2) if verification == "quorum" else (1, 1)
        spot = rng.choice((200, 500, 1000)) if verification == "spot" else 0
        price = rng.choice((0, 0, 10, 25, 100))
        replicas = {"none": 1, "spot": 3, "quorum": 6}[verification]
        budget = price * chunks * replicas
        if price and rng.random() < 0.2:
            budget //= 4  # too little: it waits for a top-up
        poison = frozenset(rng.sample(range(chunks), min(chunks, rng.randint(1, 3)))
                           ) if rng.random() < 0.15 else frozenset()
        reqs = [r for r in REQUIREMENTS if rng.random() < 0.15]
        spec = Spec(task_id, rng.choice(CUSTOMERS), items, chunk_size, chunks, verification,
                    price, poison)
        self._submit(spec, priority=rng.randint(1, 10), cap=rng.randint(3, 60),
                     attempts=rng.randint(4, 6), reqs=reqs, budget=budget, k=k, m=m,
                     spot=spot)
        self.at(self.now + rng.randint(300, 2500), self._customer)

    def _live_tasks(self) -> list[str]:
        return [t for t, task in self.core.tasks.items()
                if task.state not in TERMINAL_TASK_STATES and t in self.specs
                and not t.startswith("f")]

    def _chaos(self) -> None:
        if self.draining:
            return
        rng = self.rng
        r = rng.random()
        live = [w for w in self.workers if not w.gone]
        tasks = self._live_tasks()
        if r < 0.25 and live:  # a connection drops; the worker comes back with its leases
            worker = rng.choice([w for w in live if w.flaky_net] or live)
            if worker.conn is not None:
                self._drop(worker.conn)
        elif r < 0.32 and live:  # a stall: short ones survive, long ones end the session
            worker = rng.choice(live)
            worker.stalled_until = self.now + rng.choice((rng.randint(200, 1500),
                                                          rng.randint(4000, 8000)))
        elif r < 0.36 and live:  # a worker leaves for good; another joins
            worker = rng.choice(live)
            worker.gone = True
            if worker.conn is not None:
                self._drop(worker.conn)
            self._connect(self._new_worker())
        elif r < 0.5 and tasks:
            task_id = rng.choice(tasks)
            state = self.core.tasks[task_id].state
            verb = TaskResume if state is TaskState.PAUSED else TaskPause
            self.handle(lambda eid, at: verb(eid, at, task_id))
            self.stats.seen[verb.__name__] += 1
        elif r < 0.65 and tasks:
            task_id = rng.choice(tasks)
            cap, prio = rng.randint(1, 60), rng.randint(1, 10)
            self.handle(lambda eid, at: TaskUpdate(eid, at, task_id, cap, prio))
        elif r < 0.72 and tasks:
            task_id = rng.choice(tasks)
            self.handle(lambda eid, at: TaskCancel(eid, at, task_id, "changed plans"))
        elif r < 0.85 and tasks:
            self._top_up(rng.choice(tasks))
        self.at(self.now + rng.randint(100, 600), self._chaos)

    def _top_up(self, task_id: str) -> None:
        task = self.core.tasks[task_id]
        need = self.core.treasury.needs(task) * 3 + task.price * 6  # replicas cost more
        if need:
            self.handle(lambda eid, at: TaskFund(eid, at, task_id, need))

    # ---- the end ------------------------------------------------------------------------

    def _start_drain(self) -> None:
        self.draining = True
        self.history.append(f"{self.now} ms  DRAIN")
        for task_id in ("fa-hi", "fa-lo", "fb"):
            self.handle(event(TaskCancel, task_id, "measured"))
        for worker in self.workers:
            worker.fail_rate = worker.lie_rate = 0.0
            worker.flaky_net = False
            worker.stalled_until = min(worker.stalled_until, self.now)
        for task_id in self._live_tasks():  # customers in a hurry: resumed, uncapped, funded
            if self.core.tasks[task_id].state is TaskState.PAUSED:
                self.handle(event(TaskResume, task_id))
            self.handle(event(TaskUpdate, task_id, 100))
            self._top_up(task_id)
        for _ in range(6):  # reliable newcomers on fresh accounts meet every requirement
            self._connect(self._new_worker(reliable=True))
        self.at(self.now + 5000, self._keep_funded)

    def _keep_funded(self) -> None:
        for task_id in self._live_tasks():
            self._top_up(task_id)
        self.at(self.now + 5000, self._keep_funded)

    def _all_finished(self) -> bool:
        return all(t.state in TERMINAL_TASK_STATES for t in self.core.tasks.values())

    def _final_checks(self) -> None:
        core = self.core
        stuck = {t.id: (t.state.label, t.done, t.failed, t.leased, t.pending, t.votes_held)
                 for t in core.tasks.values() if t.state not in TERMINAL_TASK_STATES}
        assert not stuck, f"tasks still running at {self.now} ms: {stuck}"
        for task_id, spec in self.specs.items():
            task = core.tasks[task_id]
            for chunk in spec.poison:  # every poison chunk was found out (unless cancelled)
                state = task.chunk_state[chunk]
                assert state != ChunkState.DONE, f"poison chunk {task_id}/{chunk} was accepted"
                if task.state is not TaskState.CANCELLED:
                    assert state == ChunkState.FAILED
                    assert task.last_error[chunk].startswith("poison"), (
                        f"{task_id}/{chunk} failed as {task.last_error[chunk]!r}")
        for worker in self.workers:  # poison and deaths blame nobody
            if worker.reliable and worker.key in core.trust.workers:
                standing = core.trust.workers[worker.key]
                assert not standing.blame and not standing.quarantined_until, (
                    f"honest, reliable {worker.key} was blamed: {standing}")
        self.stats.quarantined = sum(1 for s in core.trust.workers.values()
                                     if s.quarantined_until)
