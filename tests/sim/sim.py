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
from dataclasses import dataclass, field
from typing import Any

import msgspec

from coordinator.core import effects as fx
from coordinator.core.capabilities import unmet
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import (
    Event,
    FailIn,
    HeartbeatIn,
    ProgressIn,
    ResultIn,
    SessionClosed,
    SessionHello,
    TaskCancel,
    TaskSubmitted,
    Tick,
)
from coordinator.core.invariants import check_invariants
from coordinator.core.lifecycle import TERMINAL_TASK_STATES, TaskState
from coordinator.core.state import Task, worker_key
from coordinator.core.trust import TrustConfig
from schema.worker import (
    PROTOCOL_VERSION,
    Accepted,
    CoordinatorMessage,
    Error,
    Rejected,
    Revoke,
    Welcome,
)

# No rate limits or quarantine here: the drain and deadlock checks assume every live worker
# can take work. Fault attribution has its own tests (tests/core/test_rules_trust.py).
CONFIG = CoreConfig(trust=TrustConfig(rate_limit_blame=10**9, quarantine_blame=10**9,
                                      invalid_quarantine=10**9))
TICK_MS = 250
REQUIREMENTS = ["gpu", "python>=3.10", "mem_gb>=8", "region!=eu"]
ALL_CAPS = ["gpu", "python=3.12", "mem_gb=64", "region=us"]  # meets every requirement above

Build = Callable[[int, int], Event]  # (eid, at_ms) -> event; the runtime stamps both


class SimFailure(AssertionError):
    pass


class RetryDeadlock(SimFailure):
    """Chunks with attempts left that every live capable worker has failed once, never retried
    (the bug fixed in 7e0ad06: each such worker deferred the chunk to another)."""


class _Close:
    """The close frame of a session the coordinator ends."""


CLOSE = _Close()
Down = CoordinatorMessage | fx.AssignChunk | _Close


@dataclass(frozen=True)
class Params:
    chaos_ms: int = 40_000  # how long workers, network and customers misbehave
    drain_ms: int = 30_000  # then everyone is reliable; a drain this long without progress fails
    drain_max_ms: int = 900_000  # and no drain lasts longer than this
    workers: tuple[int, int] = (10, 30)  # initial worker count range
    crash_every_ms: int = 12_000  # mean time between coordinator crashes during chaos
    fresh_drain_workers: int = 2  # reliable newcomers that meet every requirement, so no task
    # is left without a capable worker at the end
    fail_rates: tuple[float, ...] = (0.0, 0.0, 0.05, 0.2, 0.5)  # a worker draws one
    all_caps: bool = False  # every worker can take every task
    membership_changes: bool = True  # workers join and leave during chaos
    drain_reliable: bool = True  # workers stop failing chunks for the drain


@dataclass(frozen=True)
class Spec:
    task_id: str
    items: int
    chunk_size: int
    chunks: int

    def items_in(self, chunk: int) -> int:
        return min(self.chunk_size, self.items - chunk * self.chunk_size)


@dataclass
class Job:
    lease_id: int
    task_id: str
    chunk: int
    items: int
    outcome: str  # ok | fail | fatal | bad | hang
    reply: tuple[str, Any] | None = None  # ("result", bytes) or ("fail", (error, retryable))
    zombie: bool = False  # revoked, but this worker sends its result anyway


@dataclass
class Conn:
    id: str
    worker: SimWorker
    gen: int  # the coordinator incarnation this connection reached
    alive: bool = True
    welcomed: bool = False
    up_at: int = 0  # the last scheduled delivery each way, to keep per-session order
    down_at: int = 0


@dataclass
class SimWorker:
    account: str
    worker_id: str
    slots: int
    ms_per_item: int
    fail_rate: float
    bad_rate: float
    hang_rate: float
    zombie_rate: float
    caps: list[str]
    prefetch: int = 0  # leases held beyond the slots (jobs here all run at once)
    protocol: int = PROTOCOL_VERSION
    jobs: dict[int, Job] = field(default_factory=dict)
    conn: Conn | None = None
    gone: bool = False
    stalled_until: int = 0

    @property
    def key(self) -> str:
        return worker_key(self.account, self.worker_id)


@dataclass
class Stats:
    steps: int = 0
    sim_ms: int = 0
    crashes: int = 0
    results: int = 0
    accepted_seen: int = 0
    tasks: int = 0
    workers: int = 0
    seen: dict[str, int] = field(default_factory=dict)  # which paths the run went through

    def saw(self, what: str) -> None:
        self.seen[what] = self.seen.get(what, 0) + 1


class Store:
    """The durable rows, applied one group commit at a time."""

    def __init__(self) -> None:
        self.tasks: dict[str, fx.PersistTask] = {}
        self.states: dict[str, tuple[str, int | None]] = {}
        self.results: dict[tuple[str, int], fx.PersistResult] = {}
        self.by_lease: dict[int, fx.PersistResult] = {}
        self.failures: list[fx.PersistFailure] = []

    def apply(self, e: fx.Effect) -> None:
        match e:
            case fx.PersistTask():
                assert e.task_id not in self.tasks, f"task {e.task_id} persisted twice"
                self.tasks[e.task_id] = e
                self.states[e.task_id] = ("running", None)
            case fx.PersistTaskState():
                old = self.states.get(e.task_id)
                assert old is not None, f"state of unknown task {e.task_id} persisted"
                assert old[0] == "running", (
                    f"task {e.task_id} moved from {old[0]} to {e.state} in the store"
                )
                self.states[e.task_id] = (e.state, e.finished_ms)
            case fx.PersistResult():
                key = (e.task_id, e.chunk_index)
                assert key not in self.results, (
                    f"chunk {key} accepted twice: leases {self.results[key].lease_id} and "
                    f"{e.lease_id}"
                )
                assert e.lease_id not in self.by_lease, f"lease {e.lease_id} persisted twice"
                self.results[key] = self.by_lease[e.lease_id] = e
            case fx.PersistFailure():
                self.failures.append(e)

    def restore(self, core: Core) -> None:
        """What the real store's load_tasks/recent_accepted hand a freshly booted core."""
        for task_id, t in self.tasks.items():
            state, finished = self.states[task_id]
            task = Task(
                id=t.task_id, owner=t.owner, name=t.name, chunks_total=t.chunks_total,
                items_total=t.items_total, chunk_size=t.chunk_size,
                max_concurrency=t.max_concurrency, max_attempts=t.max_attempts,
                chunk_timeout_ms=t.chunk_timeout_ms, requirements=list(t.requirements),
                code_ref=t.code_ref, created_ms=t.created_ms,
                state=TaskState[state.upper()], finished_ms=finished,
            )
            done = [(c, r.items) for (tid, c), r in self.results.items() if tid == task_id]
            failed: dict[int, str] = {}
            failures: dict[int, int] = {}
            for f in self.failures:
                if f.task_id == task_id:
                    failures[f.chunk_index] = failures.get(f.chunk_index, 0) + 1
                    if f.final:
                        failed[f.chunk_index] = f.error
            core.restore_task(task, done, failed, failures)
        core.restore_accepted(
            [(r.lease_id, worker_key(r.account_id, r.worker_id)) for r in self.by_lease.values()]
        )


def encode_output(n: int) -> bytes:
    return msgspec.msgpack.encode(list(range(n)))


class Sim:
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

    def _check_effects(self, effects: list[fx.Effect]) -> None:
        for e in effects:
            match e:
                case fx.AssignChunk():
                    assert e.lease_id not in self.granted, f"lease id {e.lease_id} reused"
                    key = (e.task_id, e.chunk_index)
                    assert key not in self.store.results, f"chunk {key} assigned after acceptance"
                    conn = self.conns[e.session_id]
                    self.granted[e.lease_id] = (e.task_id, e.chunk_index, conn.worker.key)
                case fx.PersistResult():
                    key = (e.task_id, e.chunk_index)
                    assert key not in self.store.results and key not in self.uncommitted_results, (
                        f"chunk {key} accepted twice (second time with lease {e.lease_id})"
                    )
                    self.uncommitted_results.add(key)
                    who = worker_key(e.account_id, e.worker_id)
                    assert self.granted.get(e.lease_id) == (*key, who), (
                        f"result persisted for lease {e.lease_id} as {key} by {who}, but that "
                        f"lease was granted as {self.granted.get(e.lease_id)}"
                    )
                    assert e.items == self.specs[e.task_id].items_in(e.chunk_index)
                    assert len(msgspec.msgpack.decode(e.output)) == e.items
                case _:
                    pass

    def _count(self, effects: list[fx.Effect]) -> None:
        saw = self.stats.saw
        for e in effects:
            match e:
                case fx.Send(message=Welcome() as w):
                    saw("welcome") if not (w.resumed or w.dropped) else None
                    saw("welcome resumed") if w.resumed else None
                    saw("welcome dropped") if w.dropped else None
                case fx.Send(message=Rejected(reason=why)):
                    saw(f"rejected: {why[:24]}")
                case fx.Send(message=Accepted()) if not any(
                    isinstance(x, fx.PersistResult) for x in effects
                ):
                    saw("accepted again")
                case fx.Send(message=m):
                    saw(type(m).__name__.lower())
                case fx.CloseSession(code=code):
                    saw(f"close {code}")
                case fx.PersistFailure(final=final):
                    saw("failure final" if final else "failure retry")
                    who = worker_key(e.account_id, e.worker_id)
                    self.failed_by.setdefault((e.task_id, e.chunk_index), set()).add(who)
                case fx.PersistTaskState(state=state):
                    saw(f"task {state}")
                case fx.Reply(ok=False, status=status):
                    saw(f"reply {status}")
                case fx.AssignChunk(attempt=attempt):
                    saw("assign retry" if attempt > 1 else "assign")
                    key = self.conns[e.session_id].worker.key
                    if key in self.failed_by.get((e.task_id, e.chunk_index), ()):
                        saw("retried by a worker that failed it")
                case _:
                    pass

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

    def _track_orphans(self) -> None:
        since = self.orphaned_since
        self.orphaned_since = {
            lease.id: since.get(lease.id, self.now)
            for lease in self.core.leases.values() if lease.session_id is None
        }

    def _check_after_tick(self) -> None:
        """What a tick promises (invariant 3): nothing overdue survives it."""
        now, core = self.now, self.core
        for session in core.sessions.values():
            assert now - session.last_seen_ms <= CONFIG.lease_ms, (
                f"session {session.id} silent since {session.last_seen_ms} survived a tick"
            )
        for lease_id, since in self.orphaned_since.items():
            assert now < since + CONFIG.disconnect_grace_ms, (
                f"lease {lease_id}, orphaned since {since} ms, survived the tick after its "
                f"{CONFIG.disconnect_grace_ms} ms grace"
            )
        for lease in core.leases.values():
            assert lease.deadline_ms > now, (
                f"lease {lease.id} past its deadline {lease.deadline_ms} survived a tick"
            )

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

    # ---- the network ------------------------------------------------------------------

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

    # ---- workers ----------------------------------------------------------------------

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

    # ---- chaos and customers ------------------------------------------------------------

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

    def _deferred_forever(self) -> list[str]:
        """Requeued chunks that every live capable session has failed before."""
        found = []
        for task in self.core.tasks.values():
            capable = {
                s.worker_key for s in self.core.sessions.values()
                if not unmet(s.capabilities, task.requirements)
            }
            for chunk in task.requeue:
                failed_on = task.failed_on.get(chunk, set())
                if len(capable) > 1 and capable <= failed_on:
                    found.append(f"{task.id}/{chunk} failed on {sorted(failed_on)}")
        return found

    def _final_checks(self) -> None:
        self._commit(self.gen)
        stuck = {
            t.id: f"{t.done}+{t.failed}/{t.chunks_total} done, {t.leased} leased, "
                  f"{t.pending} pending, failures {t.failures}"
            for t in self.core.tasks.values() if t.state not in TERMINAL_TASK_STATES
        }
        if stuck:
            deadlocked = self._deferred_forever()
            if deadlocked:
                raise RetryDeadlock(
                    f"chunks never retried although attempts are left, because every live "
                    f"capable worker already failed them once: {deadlocked}; stuck: {stuck}"
                )
        capped = self.now >= self.p.chaos_ms + self.p.drain_max_ms
        why = "the drain's hard cap" if capped else f"{self.p.drain_ms} ms after its last progress"
        assert not stuck, f"tasks still running at {self.now} ms, {why}: {stuck}"
        for task_id, task in self.core.tasks.items():
            state = self.store.states[task_id][0]
            assert state == task.state.label, (
                f"task {task_id}: the core says {task.state.label}, the store {state}"
            )
            done = sum(1 for tid, _ in self.store.results if tid == task_id)
            assert done == task.done, f"task {task_id}: {task.done} done, {done} stored"
            if task.state is TaskState.COMPLETED:
                assert done == task.chunks_total
            if task.state is TaskState.CANCELLED:
                assert task_id in self.cancel_asked, f"task {task_id} cancelled by nobody"
        assert set(self.core.tasks) == set(self.store.tasks)
        assert self.stats.crashes == 0 or self.epoch == self.stats.crashes + 1
