"""The dashboard's live views, built from the core's state for ``coordinator/live.py``.

Everything here only reads the core (it runs between core turns, never inside one), so a
recorded session still replays byte for byte. Each builder is bounded: lists are cut to
their first entries with a ``*_total`` beside them, and the per-task and per-account state
kept here is a few numbers, updated from the tasks the core marked changed.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import islice

from coordinator.core.capabilities import unmet
from coordinator.core.core import Core
from coordinator.core.ledger import PLATFORM, escrow, pending, wallet
from coordinator.core.lifecycle import TERMINAL_TASK_STATES, TaskState
from coordinator.core.state import Lease, Session, Task
from schema import live as lv
from schema.rest import WithdrawalInfo

ASSIGNMENTS_SHOWN = 100  # active assignments listed on a task's page
SESSIONS_SHOWN = 100  # worker sessions listed in one account's worker view
RUNNING_SHOWN = 32  # assignments listed per worker session
IDLE_REASONS_MAX = 6  # reasons given for one idle session
HISTORY_SAMPLES_MAX = 120  # burn-down points kept per live task (then thinned to half)
HISTORY_FIRST_MS = 1000  # burn-down points start 1 s apart; thinning doubles the spacing
HISTORY_FINISHED_MAX = 256  # finished tasks whose burn-down is kept (the latest ones)
RATE_POINTS_MAX = 300  # platform chunks/s samples kept (one per second: five minutes)
PLATFORM_LIST_MAX = 100  # workers and withdrawals listed in the platform view
QUEUE_SHOWN = 50  # tasks listed by queue depth in the platform view
GRID_BLOCK = 1024  # chunk states are compared and sent in blocks of this many chunks
GRID_SUPER = 64 * GRID_BLOCK  # ... found by first comparing blocks of this many
GRID_DELTA_BYTES_MAX = 64 * 1024  # a larger change is sent as "refetch" instead


def assignment(lease: Lease) -> lv.Assignment:
    return lv.Assignment(lease.id, lease.task_id, lease.chunk, lease.worker_id, lease.done,
                         lease.total, lease.started_ms)


# ---- a task's page ---------------------------------------------------------------------


class ChunkGrid:
    """The chunk states last sent to a task's watchers, to send only what changed."""

    def __init__(self, states: bytearray) -> None:
        self.shadow = bytearray(states)
        self.seq = 0

    def diff(self, states: bytearray) -> list[lv.ChunkRange] | None:
        """The changed ranges (and remember them), or None when too much changed to send."""
        shadow = self.shadow
        if shadow == states:
            return []
        spans: list[list[int]] = []
        n = len(states)
        for s0 in range(0, n, GRID_SUPER):
            s1 = min(n, s0 + GRID_SUPER)
            if shadow[s0:s1] == states[s0:s1]:
                continue
            for b0 in range(s0, s1, GRID_BLOCK):
                b1 = min(s1, b0 + GRID_BLOCK)
                if shadow[b0:b1] != states[b0:b1]:
                    if spans and spans[-1][1] == b0:
                        spans[-1][1] = b1
                    else:
                        spans.append([b0, b1])
        self.seq += 1
        for a, b in spans:
            shadow[a:b] = states[a:b]
        if sum(b - a for a, b in spans) > GRID_DELTA_BYTES_MAX:
            return None
        return [lv.ChunkRange(a, bytes(states[a:b])) for a, b in spans]


class History:
    """A task's burn-down points in bounded memory: when full, every other one is dropped
    and the spacing doubles, so it always covers the task's whole life. The latest state is
    kept apart, so the history always ends where the task is now."""

    def __init__(self) -> None:
        self.points: list[lv.Sample] = []
        self.spacing_ms = HISTORY_FIRST_MS
        self.last: lv.Sample | None = None

    def add(self, at_ms: int, done: int, spent: int) -> None:
        self.last = lv.Sample(at_ms, done, spent)
        points = self.points
        if points and at_ms - points[-1].at_ms < self.spacing_ms:
            return
        points.append(self.last)
        if len(points) > HISTORY_SAMPLES_MAX:
            thinned = points[::2]
            if thinned[-1] is not points[-1]:
                thinned.append(points[-1])
            self.points = thinned
            self.spacing_ms *= 2

    def samples(self) -> list[lv.Sample]:
        last = self.last
        return [*self.points, last] if last is not None and (
            not self.points or self.points[-1] is not last) else list(self.points)


def task_detail(core: Core, task: Task, history: History | None,
                with_history: bool) -> lv.TaskDetail:
    leases = [core.leases[i] for i in islice(task.lease_of_chunk.values(), ASSIGNMENTS_SHOWN)]
    return lv.TaskDetail(
        task.id, core.now, [assignment(lease) for lease in leases], task.leased,
        (history.samples() if history else []) if with_history else None,
    )


# ---- a worker account's sessions -------------------------------------------------------


def trust_info(core: Core, key: str) -> lv.TrustInfo:
    s = core.trust.workers.get(key)
    if s is None:
        return lv.TrustInfo()
    return lv.TrustInfo(s.streak >= core.trust.config.trusted_after, s.streak, s.valid,
                        s.invalid, _limited(core, key))


def _limited(core: Core, key: str) -> str | None:
    """Like ``Trust.why_limited`` but without trimming the core's windows."""
    s = core.trust.workers.get(key)
    if s is None:
        return None
    now, cfg = core.now, core.trust.config
    if s.quarantined_until > now:
        return (f"quarantined for {(s.quarantined_until - now + 999) // 1000} more s: "
                f"{s.reason}")
    blamed = sum(1 for at in s.blame if at > now - cfg.blame_window_ms)
    if blamed >= cfg.rate_limit_blame:
        return (f"limited to one chunk at a time: {blamed} chunks failed here recently "
                "that other workers completed")
    return None


def _can_pay(core: Core, task: Task) -> bool:
    """``Treasury.can_lease`` without trimming its spending window."""
    treasury = core.treasury
    if task.price == 0:
        return True
    if treasury.available(task) < task.price:
        return False
    if task.max_spend_per_minute:
        recent = treasury._recent.get(task.id, ())
        spent = sum(b[1] for b in recent if b[0] > (core.now - 60_000) // 1000)
        return spent + treasury.reserved(task) + task.price <= task.max_spend_per_minute
    return True


def why_idle(core: Core, session: Session) -> list[str]:
    """Why a session runs nothing, in plain words (the scheduler's reasons, read-only)."""
    limited = _limited(core, session.worker_key)
    if limited is not None and limited.startswith("quarantined"):
        return [f"this worker is {limited}"]
    reasons: list[str] = []
    for task_id in core.sched.runnable:
        task = core.tasks[task_id]
        missing = unmet(session.capabilities, task.requirements)
        if missing:
            reasons.append(f"task {task.id} requires {', '.join(missing)}")
        elif task.leased >= task.max_concurrency:
            reasons.append(f"task {task.id} is at its cap of {task.max_concurrency} "
                           "chunks at once")
        elif not _can_pay(core, task):
            reasons.append(f"task {task.id} needs funds (or is at its spending limit)")
        else:
            reasons.append(f"task {task.id}: its pending chunks need a different worker "
                           "(verification or retry on another account)")
        if len(reasons) >= IDLE_REASONS_MAX:
            break
    return reasons or ["no task has pending work"]


def workers_view(core: Core, sessions: list[Session]) -> lv.WorkersView:
    out = []
    reasons: dict[tuple[str, ...], list[str]] = {}  # same capabilities: same reasons
    for s in islice(sessions, SESSIONS_SHOWN):
        running = [assignment(core.leases[i]) for i in sorted(s.leases)[:RUNNING_SHOWN]]
        idle: list[str] = []
        if not s.leases:
            caps = tuple(sorted(f"{k}={v}" for k, v in s.capabilities.items()))
            idle = reasons.get(caps) or reasons.setdefault(caps, why_idle(core, s))
        out.append(lv.WorkerSessionInfo(
            s.worker_id, s.slots, s.prefetch,
            sorted(f"{k}={v}" if v else k for k, v in s.capabilities.items()),
            list(s.sandbox), running, trust_info(core, s.worker_key), idle,
        ))
    return lv.WorkersView(core.now, out, len(sessions))


# ---- wallets ---------------------------------------------------------------------------


class EscrowIndex:
    """What each customer holds in the escrow of their tasks, kept up to date from the tasks
    the core marks changed (every escrow movement marks its task)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.by_task: dict[str, int] = {}
        self.by_owner: dict[str, int] = {}
        for task in core.tasks.values():
            self.update(task)

    def update(self, task: Task) -> None:
        amount = self.core.treasury.ledger.balance(escrow(task.id))
        old = self.by_task.get(task.id, 0)
        if amount == old:
            return
        self.by_owner[task.owner] = self.by_owner.get(task.owner, 0) + amount - old
        if amount:
            self.by_task[task.id] = amount
        else:
            del self.by_task[task.id]


def wallet_view(core: Core, account_id: str, escrows: EscrowIndex) -> lv.WalletView:
    ledger = core.treasury.ledger
    return lv.WalletView(ledger.balance(wallet(account_id)), ledger.balance(pending(account_id)),
                         escrows.by_owner.get(account_id, 0), core.now)


# ---- the platform ----------------------------------------------------------------------


class Platform:
    """Chunks per second over time (counted from the tasks the core marks changed) and the
    admins' view."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.done: dict[str, int] = {t.id: t.done for t in core.tasks.values()}
        self.total = 0  # chunks accepted since this coordinator started
        self.rate: deque[lv.RatePoint] = deque(maxlen=RATE_POINTS_MAX)
        self._last: tuple[int, int] | None = None  # (at_ms, total) of the last point

    def task_changed(self, task: Task) -> None:
        self.total += task.done - self.done.get(task.id, 0)
        if task.state in TERMINAL_TASK_STATES:
            self.done.pop(task.id, None)
        else:
            self.done[task.id] = task.done

    def sample(self, now_ms: int) -> None:
        if self._last is not None:
            at, total = self._last
            if now_ms > at:
                self.rate.append(lv.RatePoint(now_ms, (self.total - total) * 1000
                                              // (now_ms - at)))
        self._last = (now_ms, self.total)

    def view(self) -> lv.PlatformView:
        core = self.core
        sessions = core.sessions.values()
        runnable = [core.tasks[t] for t in core.sched.runnable]
        queue = heapq.nlargest(QUEUE_SHOWN, runnable, key=lambda t: t.pending)
        pending_w = sorted(core.treasury.withdrawals.values(), key=lambda w: w.id)
        ledger = core.treasury.ledger
        return lv.PlatformView(
            now_ms=core.now, workers_total=len(core.sessions),
            slots_total=sum(s.slots for s in sessions), leases_active=len(core.leases),
            workers=[lv.PlatformWorker(s.account_id, s.worker_id, s.slots, len(s.leases),
                                       s.last_seen_ms)
                     for s in islice(sessions, PLATFORM_LIST_MAX)],
            rate=list(self.rate),
            tasks_running=sum(1 for t in core.tasks.values() if t.state is TaskState.RUNNING),
            queue=[lv.QueueDepth(t.id, t.name, t.owner, t.pending, t.leased, t.max_concurrency)
                   for t in queue],
            revenue=ledger.balance(PLATFORM), deposited=ledger.deposited,
            withdrawn=ledger.withdrawn,
            withdrawals=[WithdrawalInfo(w.id, w.account_id, w.amount, "pending", w.created_ms)
                         for w in pending_w[:PLATFORM_LIST_MAX]],
            withdrawals_total=len(pending_w),
        )
