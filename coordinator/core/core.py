"""The coordinator's decisions: ``Core.handle(event) -> list[Effect]``.

Synchronous and deterministic: no I/O, no clock, no randomness. Time and ids come in on the
events; lease ids are drawn from a counter under the boot ``epoch`` so they never repeat
across restarts. Adapters apply the effects (persist first, then send).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from coordinator.core import effects as fx
from coordinator.core.capabilities import RequirementError, parse_capabilities
from coordinator.core.control import TaskControl
from coordinator.core.events import (
    Deposit,
    EpochStarted,
    Event,
    FailIn,
    HeartbeatIn,
    ProgressIn,
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
    Withdraw,
    WithdrawalDecision,
)
from coordinator.core.lifecycle import ChunkState
from coordinator.core.outcomes import Outcomes
from coordinator.core.scheduling import Scheduler
from coordinator.core.state import Lease, Session, Task, worker_key
from coordinator.core.treasury import Treasury, Withdrawal
from coordinator.core.trust import Trust, TrustConfig
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

IDS_PER_EPOCH = 1 << 32
CLOSE_POLICY = 1008
CLOSE_REPLACED = 4000
CLOSE_SILENT = 4001


@dataclass(frozen=True, slots=True)
class CoreConfig:
    heartbeat_ms: int = 2000
    lease_ms: int = 3500  # a session silent this long is dead; its leases return to the queue
    disconnect_grace_ms: int = 1000  # a dropped session's leases wait this long for a resume
    recent_accepted_max: int = 65536  # accepted leases remembered for idempotent re-sends
    fee_bps: int = 1000  # the platform's fee per accepted chunk, in basis points (10 %)
    trust: TrustConfig = field(default_factory=TrustConfig)


class Core:
    def __init__(self, config: CoreConfig, epoch: int) -> None:
        self.config = config
        self.epoch = epoch
        self._next_id = 0  # lease and transfer ids: epoch << 32 | n
        self.now = 0  # the time of the event being handled
        self.tasks: dict[str, Task] = {}
        self.leases: dict[int, Lease] = {}
        self.sessions: dict[str, Session] = {}
        self.session_of_worker: dict[str, str] = {}
        self.orphans: dict[str, set[int]] = {}  # worker key -> leases awaiting its resume
        self.recent_accepted: OrderedDict[int, str] = OrderedDict()  # lease -> worker key
        self.sched = Scheduler(self)
        self.treasury = Treasury(self, config.fee_bps)
        self.trust = Trust(config.trust)
        self.outcomes = Outcomes(self)
        self.control = TaskControl(self)
        self._out: list[fx.Effect] = []
        self._cause = 0

    # ---- entry point ------------------------------------------------------------------

    def handle(self, event: Event) -> list[fx.Effect]:
        self._out = []
        self._cause = event.eid
        self.now = event.at_ms
        match event:
            case Tick():
                self._tick(event.at_ms)
            case SessionHello():
                self._hello(event)
            case HeartbeatIn():
                self._touch(event.session_id, event.at_ms)
            case ProgressIn():
                self._progress(event)
            case ResultIn():
                self.outcomes.result(event)
            case FailIn():
                self.outcomes.fail(event)
            case SessionClosed():
                self._closed(event.session_id, event.at_ms)
            case TaskSubmitted():
                self.control.submit(event)
            case TaskCancel():
                self.control.cancel(event)
            case TaskPause():
                self.control.pause(event)
            case TaskResume():
                self.control.resume(event)
            case TaskUpdate():
                self.control.update(event)
            case WhyIdleIn():
                self._why_idle(event)
            case EpochStarted():
                assert event.epoch > self.epoch, "epochs only grow"
                self.epoch, self._next_id = event.epoch, 0
            case TaskFund():
                self.control.fund(event)
            case Deposit() | Withdraw() | WithdrawalDecision():
                self.treasury.handle(event)
            case _:
                raise AssertionError(f"unhandled event {event!r}")
        out, self._out = self._out, []
        return out

    def emit(self, effect: fx.Effect) -> None:
        self._out.append(effect)

    @property
    def cause(self) -> int:
        return self._cause

    def send(self, session_id: str, message: CoordinatorMessage) -> None:
        self.emit(fx.Send(self._cause, session_id, message))

    def new_id(self) -> int:
        """Lease and transfer ids are ``epoch << 32 | n``: unique across restarts, and exact
        as JSON numbers in a browser (below 2**53) for two million epochs. The runtime starts
        a new epoch (``EpochStarted``) long before ``n`` runs out."""
        self._next_id += 1
        assert self._next_id < IDS_PER_EPOCH, "ids of this epoch ran out"
        return (self.epoch << 32) | self._next_id

    new_lease_id = new_id

    @property
    def last_id(self) -> int:
        """The id ``new_id`` drew last (ids only grow, also across epochs)."""
        return (self.epoch << 32) | self._next_id

    @property
    def lease_ids_left(self) -> int:
        return IDS_PER_EPOCH - 1 - self._next_id

    # ---- sessions ---------------------------------------------------------------------

    def _hello(self, ev: SessionHello) -> None:
        if ev.protocol != PROTOCOL_VERSION:
            self.send(ev.session_id, Error(
                f"protocol {ev.protocol} is not supported; this coordinator speaks "
                f"{PROTOCOL_VERSION}: upgrade tn-worker", fatal=True,
            ))
            self.emit(fx.CloseSession(ev.eid, ev.session_id, CLOSE_POLICY, "protocol mismatch"))
            return
        try:
            caps = parse_capabilities(ev.capabilities)
        except RequirementError as exc:
            self.send(ev.session_id, Error(str(exc), fatal=True))
            self.emit(fx.CloseSession(ev.eid, ev.session_id, CLOSE_POLICY, "bad capability"))
            return
        key = worker_key(ev.account_id, ev.worker_id)
        old = self.session_of_worker.get(key)
        if old is not None and old in self.sessions:
            self.emit(fx.CloseSession(
                ev.eid, old, CLOSE_REPLACED, "replaced by a newer session of the same worker",
            ))
            self._closed(old, ev.at_ms)
        session = Session(
            ev.session_id, ev.account_id, ev.worker_id, caps, ev.slots, ev.at_ms,
            sandbox=list(ev.sandbox), prefetch=ev.prefetch,
        )
        self.sessions[session.id] = session
        self.session_of_worker[key] = session.id
        resumed, dropped = [], []
        orphans = self.orphans.pop(key, set())
        for lease_id in dict.fromkeys(ev.held_leases):  # once each, in order
            if lease_id in orphans and session.free > 0:
                lease = self.leases[lease_id]
                lease.session_id = session.id
                lease.orphaned_until_ms = 0
                session.leases.add(lease_id)
                orphans.discard(lease_id)
                resumed.append(lease_id)
            elif lease_id not in self.recent_accepted:
                dropped.append(lease_id)
        # orphans it no longer holds (or has no room for) go back to the queue now
        for lease_id in sorted(orphans):
            self.outcomes.drop_lease(self.leases[lease_id], ChunkState.PENDING, ev.at_ms)
        self.send(session.id, Welcome(
            session.id, self.config.heartbeat_ms, self.config.lease_ms, resumed, dropped,
        ))
        self.sched.session_free(session)
        self.sched.fill_session(session, ev.at_ms)

    def _touch(self, session_id: str, now: int) -> Session | None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.last_seen_ms = now
        return session

    def _closed(self, session_id: str, now: int) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self.sched.session_gone(session)
        if self.session_of_worker.get(session.worker_key) == session_id:
            del self.session_of_worker[session.worker_key]
        for lease_id in sorted(session.leases):
            lease = self.leases[lease_id]
            lease.session_id = None
            lease.orphaned_until_ms = now + self.config.disconnect_grace_ms
            self.orphans.setdefault(lease.worker_key, set()).add(lease_id)
        session.leases.clear()

    def _tick(self, now: int) -> None:
        silent = [
            s for s in self.sessions.values() if now - s.last_seen_ms > self.config.lease_ms
        ]
        for session in silent:
            self.emit(fx.CloseSession(
                self._cause, session.id, CLOSE_SILENT,
                f"no heartbeat for {self.config.lease_ms} ms",
            ))
            self._closed(session.id, now - self.config.disconnect_grace_ms)
        for lease in list(self.leases.values()):
            if lease.session_id is None and lease.orphaned_until_ms <= now:
                self.outcomes.drop_lease(lease, ChunkState.PENDING, now)
            elif lease.deadline_ms <= now:
                if lease.session_id is not None:
                    self.send(lease.session_id, Revoke(lease.id, "chunk deadline passed"))
                self.outcomes.chunk_failed(
                    lease, "the chunk ran past its deadline on the worker", True, now
                )
        if any(self.tasks[t].max_spend_per_minute for t in self.sched.runnable):
            self.sched.dirty = True  # a spending window may have moved on
        if self.trust.released(now):
            self.sched.dirty = True  # a quarantined worker may take work again
        self.sched.fill_all(now)

    # ---- chunk outcomes ---------------------------------------------------------------

    def owned_lease(self, session_id: str, lease_id: int, now: int) -> Lease | None:
        """The lease if this session holds it; otherwise tell the worker why not (fencing)."""
        session = self._touch(session_id, now)
        if session is None:
            return None
        lease = self.leases.get(lease_id)
        if lease is not None and lease.session_id == session_id:
            return lease
        if lease is None and self.recent_accepted.get(lease_id) == session.worker_key:
            self.send(session_id, Accepted(lease_id))  # a re-sent result: already accepted
            return None
        why = (
            "lease belongs to another session"
            if lease is not None
            else "lease is unknown, expired or revoked; its chunk went back to the queue"
        )
        self.send(session_id, Rejected(lease_id, why))
        return None

    def _why_idle(self, ev: WhyIdleIn) -> None:
        session = self._touch(ev.session_id, ev.at_ms)
        if session is not None:
            self.send(session.id, Idle(self.sched.why_idle(session, ev.at_ms)))

    def _progress(self, ev: ProgressIn) -> None:
        session = self._touch(ev.session_id, ev.at_ms)
        lease = self.leases.get(ev.lease_id)
        if session is None or lease is None or lease.session_id != ev.session_id:
            return
        lease.done, lease.total = ev.done, ev.total
        self.emit(fx.TaskChanged(ev.eid, lease.task_id))

    def remember_accepted(self, lease: Lease) -> None:
        self.recent_accepted[lease.id] = lease.worker_key
        if len(self.recent_accepted) > self.config.recent_accepted_max:
            self.recent_accepted.popitem(last=False)

    # ---- restart ----------------------------------------------------------------------

    def restore_task(
        self,
        task: Task,
        done: list[tuple[int, int]],
        failed: dict[int, str],
        failures: dict[int, int],
    ) -> None:
        """Rebuild a task from the store after a restart: ``done`` is (chunk, items) pairs,
        ``failed`` the chunks failed for good with their last error, ``failures`` the failed
        attempts of every chunk. Nothing is leased after a restart: the rest is pending."""
        for chunk, items in done:
            task.chunk_state[chunk] = ChunkState.DONE
            task.items_done += items
        for chunk, error in failed.items():
            task.chunk_state[chunk] = ChunkState.FAILED
            task.last_error[chunk] = error
        task.done, task.failed = len(done), len(failed)
        task.failures = dict(failures)
        self.tasks[task.id] = task
        self.sched.task_runnable(task)

    def restore_money(self, balances: dict[str, int], keys: list[str], deposited: int,
                      withdrawn: int, withdrawals: list[Withdrawal]) -> None:
        """The ledger's balances and idempotency keys, and pending withdrawals, as stored."""
        self.treasury.restore(balances, keys, deposited, withdrawn, withdrawals)

    def restore_spending(self, payouts: list[tuple[str, int, int]]) -> None:
        """The last minute's payouts (task, at_ms, amount), for spending caps."""
        self.treasury.restore_spending(payouts)

    def restore_accepted(self, accepted: list[tuple[int, str]]) -> None:
        """Recently accepted (lease, worker key) pairs, oldest first, for idempotent re-sends."""
        for lease_id, key in accepted[-self.config.recent_accepted_max :]:
            self.recent_accepted[lease_id] = key
