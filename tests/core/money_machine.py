"""MoneyMachine: its state, the rules that drive the Core and MoneyStore, and deliveries."""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import (
    EpochStarted,
    FailIn,
    ResultIn,
    SessionClosed,
    SessionHello,
    Tick,
)
from coordinator.core.invariants import check_invariants
from coordinator.core.ledger import WORLD, wallet
from coordinator.core.state import worker_key
from schema.worker import PROTOCOL_VERSION, Accepted, Rejected, Revoke, Welcome
from tests.core.money_invariants import MoneyInvariants
from tests.core.money_model import (
    CUSTOMERS,
    GROUP_MAX,
    PICK,
    WORKERS,
    Build,
    ResendBug,
    Worker,
    heartbeat,
    named,
    nonzero,
    of_type,
    output,
)
from tests.core.money_requests import RequestRules
from tests.core.money_store import MoneyStore


class MoneyMachine(RequestRules, MoneyInvariants, RuleBasedStateMachine):
    """The marketplace's money under load and crashes: customers c0 and c1, workers on
    accounts wa0 (two), wa1, wa2 and c1 (a customer who works too)."""

    # Once known bugs, now fixed and checked strictly; the tests at the end of
    # test_money_props.py run this machine strict on each of them alone.
    strict_resend = True  # fixed: the store keeps every acknowledged vote
    strict_cap = True  # fixed: Core.restore_spending

    def __init__(self) -> None:
        super().__init__()
        self.config = CoreConfig()
        self.epoch = 1
        self.core = Core(self.config, self.epoch)
        self.store = MoneyStore()
        self.now = self.eid = self.session_ids = 0
        self.uncommitted: list[list[fx.Effect]] = []  # turns handled, not yet durable
        self.grouping = False
        self.workers = [Worker(a, w) for a, w in WORKERS]
        self.worker_of_session: dict[str, Worker] = {}
        self.specs: dict[str, tuple[int, int]] = {}  # task -> items, chunk size
        self.deposit_keys: list[str] = []
        self.withdraw_keys: list[str] = []
        self.asked_deposits: dict[str, set[tuple[str, int]]] = {}  # key -> (account, amount)
        self.withdrawal_ids: list[int] = []
        self.requests: dict[int, tuple[str, str, int]] = {}  # eid -> what it asked for
        self.granted: dict[int, tuple[str, int, str]] = {}  # lease -> task, chunk, worker
        self.live: set[int] = set()  # granted leases the core still holds
        self.dead: set[int] = set()  # leases that ended without a result: never payable
        self.revoked: set[int] = set()
        self.acked: dict[int, tuple[str, int]] = {}  # lease -> worker told `accepted`, epoch
        self.outputs: dict[int, bytes] = {}  # the right-length result sent for each lease
        self.boots = 1
        self.boot_of: dict[int, int] = {}  # payout transfer -> the boot of the core that made it

    # ---- turns, commits, crashes -------------------------------------------------------

    @initialize(fee_bps=st.sampled_from([0, 250, 1000, 3333, 10_000]),
                funds=st.lists(st.integers(0, 6000), min_size=2, max_size=2),
                slots=st.lists(st.integers(1, 3), min_size=len(WORKERS),
                               max_size=len(WORKERS)))
    def boot(self, fee_bps: int, funds: list[int], slots: list[int]) -> None:
        """Customers with money in their wallets, every worker connected."""
        self.config = CoreConfig(fee_bps=fee_bps)
        self.core = Core(self.config, self.epoch)
        for account, amount in zip(CUSTOMERS, funds, strict=True):
            if amount:
                self._deposit(account, amount, f"dep-{account}")
        for worker, n in zip(self.workers, slots, strict=True):
            worker.slots = n
            self._hello(worker, None)

    def _settle(self) -> None:
        """The group commit of the turns handled so far, unless a group is still open."""
        if self.uncommitted and (not self.grouping or len(self.uncommitted) >= GROUP_MAX):
            self._commit(deliver=True)

    def _commit(self, *, deliver: bool) -> None:
        turns, self.uncommitted, self.grouping = self.uncommitted, [], False
        self.store.commit(e for effects in turns for e in effects)
        if deliver:  # persisted first, then sent
            for effects in turns:
                for e in effects:
                    self._deliver(e)

    def _turn(self, build: Build) -> list[fx.Effect]:
        self._settle()
        self.eid += 1
        self.now += 1
        effects = self.core.handle(build(self.eid, self.now))
        self.uncommitted.append(effects)
        for e in effects:
            assert e.cause == self.eid, f"{e!r} does not name its cause {self.eid}"
            match e:
                case fx.AssignChunk():
                    assert e.lease_id not in self.granted, f"lease id {e.lease_id} reused"
                    who = self.worker_of_session[e.session_id].key
                    self.granted[e.lease_id] = (e.task_id, e.chunk_index, who)
                    self.live.add(e.lease_id)
                case fx.Send(message=Revoke(lease_id=lease_id)):
                    self.revoked.add(lease_id)
                case fx.PersistTransfer(kind="payout"):
                    self.boot_of[e.id] = self.boots
                case fx.PersistResult():
                    who = worker_key(e.account_id, e.worker_id)
                    assert self.granted.get(e.lease_id) == (e.task_id, e.chunk_index, who), (
                        f"result of lease {e.lease_id} persisted as {e.task_id}/"
                        f"{e.chunk_index} by {who}; granted as {self.granted.get(e.lease_id)}"
                    )
                case _:
                    pass
        ended = {lease for lease in self.live if lease not in self.core.leases}
        self.live -= ended
        self.dead |= ended - named(effects)
        return effects

    def _deliver(self, e: fx.Effect) -> None:
        match e:
            case fx.AssignChunk():
                worker = self._connected(e.session_id)
                if worker is not None:
                    worker.held[e.lease_id] = (e.task_id, e.chunk_index)
            case fx.Send(session_id=sid, message=message):
                worker = self._connected(sid)
                if worker is None:
                    return  # the connection is gone, and the message with it
                match message:
                    case Accepted():
                        self._received_accepted(worker, message)
                        worker.forget(message.lease_id)
                    case Rejected() | Revoke():
                        worker.forget(message.lease_id)
                    case Welcome():
                        for lease_id in message.dropped:
                            worker.forget(lease_id)
                    case _:
                        pass
            case fx.CloseSession():
                worker = self._connected(e.session_id)
                if worker is not None:
                    worker.session = None
            case fx.Reply(ok=True):
                self._received_reply(e)
            case _:
                pass

    def _connected(self, session_id: str) -> Worker | None:
        worker = self.worker_of_session.get(session_id)
        return worker if worker is not None and worker.session == session_id else None

    @rule(dice=st.integers(0, 1))
    def open_group(self, dice: int) -> None:
        """The next turns share one group commit (the runtime batches busy turns)."""
        self._settle()
        self.grouping = dice == 0

    @rule(when=st.sampled_from(["between turns", "mid-turn", "before the sends"]),
          dice=st.integers(0, 2))
    def crash(self, when: str, dice: int) -> None:
        """Kill -9 (one roll in three) and boot a new epoch from the store alone; the
        workers that were connected reconnect, listing the leases they hold."""
        if dice:
            return
        if when == "between turns":
            self._commit(deliver=True)
        elif when == "before the sends":
            self._commit(deliver=False)
        else:  # killed before the commit: the turns in flight never reach the disk
            lost = {lease for turn in self.uncommitted for lease in named(turn)}
            self.dead |= lost - set(self.store.votes) - set(self.store.result_of_lease)
            self.uncommitted, self.grouping = [], False
        held_before = sum(b for a, b in self.store.balances.items() if a != WORLD)
        self.dead |= self.live
        self.live = set()
        connected = [w for w in self.workers if w.session is not None]
        for worker in self.workers:
            worker.session = None
        self.epoch += 1
        self.boots += 1
        self.core = Core(self.config, self.epoch)
        self.store.restore(self.core)
        check_invariants(self.core)
        ledger = self.core.treasury.ledger
        assert nonzero(ledger.balances) == nonzero(self.store.balances)
        assert sum(b for a, b in ledger.balances.items() if a != WORLD) == held_before
        assert (ledger.deposited, ledger.withdrawn) == self.store.deposited_withdrawn()
        assert ledger.keys == set(self.store.keys)
        for task_id, task in self.core.tasks.items():
            assert task.spent == self.store.paid(task_id)
        for worker in connected:
            self._hello(worker, None)

    # ---- workers ------------------------------------------------------------------------

    def _hello(self, worker: Worker, forge: int | None) -> list[fx.Effect]:
        self._settle()
        held = sorted(worker.held)
        if forge is not None:  # also claims a lease it never had
            others = sorted(x for x, g in self.granted.items() if g[2] != worker.key)
            held.append(others[forge % len(others)] if others else (1 << 62) + forge)
        self.session_ids += 1
        sid = worker.session = f"s{self.session_ids}"
        self.worker_of_session[sid] = worker
        effects = self._turn(lambda eid, at: SessionHello(
            eid, at, sid, worker.account, worker.worker_id, [], worker.slots, held,
            PROTOCOL_VERSION, prefetch=worker.prefetch,
        ))
        s = self.store
        for welcome in [e.message for e in of_type(effects, fx.Send)]:
            if isinstance(welcome, Welcome):
                for lease_id in welcome.resumed:
                    assert self.granted[lease_id][2] == worker.key, (
                        f"{worker.key} resumed lease {lease_id} of {self.granted[lease_id]}")
                for lease_id in welcome.dropped:  # told to forget a result that counted?
                    if self.granted.get(lease_id, ("", 0, ""))[2] != worker.key:
                        continue  # a forged claim
                    why = f"{worker.key}'s lease {lease_id} was dropped; its result is kept"
                    assert lease_id not in s.result_of_lease, why
                    if lease_id in s.votes or lease_id in s.payout_of_lease:
                        self._forgotten(lease_id, 0, why)
        return effects

    @rule(index=st.integers(0, len(WORKERS) - 1), slots=st.integers(1, 3),
          prefetch=st.integers(0, 2), forge=st.none() | PICK)
    def hello(self, index: int, slots: int, prefetch: int, forge: int | None) -> None:
        """A worker (re)connects, maybe with other slots, maybe claiming another's lease."""
        worker = self.workers[index]
        worker.slots, worker.prefetch = slots, prefetch
        self._hello(worker, forge)

    @rule(advance=st.sampled_from([1, 1, 500, 1500, 3000, 4000, 20_000, 61_000]),
          silent=st.frozensets(st.integers(0, len(WORKERS) - 1), max_size=2),
          dropped=st.none() | st.integers(0, len(WORKERS) - 1), refill=st.integers(0, 9))
    def tick(self, advance: int, silent: frozenset[int], dropped: int | None,
             refill: int) -> None:
        """Time passes: maybe a connection drops, the workers not ``silent`` heartbeat, the
        clock ticks; now and then the runtime starts a new epoch (lease ids ran low)."""
        self._settle()
        self.now += advance
        gone = None if dropped is None else self.workers[dropped]
        drop = None if gone is None else gone.session
        if gone is not None and drop is not None:
            gone.session = None
            self._turn(lambda eid, at: SessionClosed(eid, at, drop, "connection lost"))
        for i, worker in enumerate(self.workers):
            sid = worker.session
            if sid is not None and i not in silent:
                self._turn(heartbeat(sid))
        if refill == 0:
            self.epoch += 1
            epoch = self.epoch
            self._turn(lambda eid, at: EpochStarted(eid, at, epoch))
        self._turn(lambda eid, at: Tick(eid, at))

    def _held(self, pick: int) -> tuple[Worker, str, int, str, int] | None:
        """A lease some connected worker holds and has not answered yet."""
        self._settle()
        pairs = [
            (w, w.session, lease) for w in self.workers if w.session is not None
            for lease in sorted(w.held) if lease not in w.answered
        ]
        if not pairs:
            return None
        worker, sid, lease = pairs[pick % len(pairs)]
        task_id, chunk = worker.held[lease]
        return worker, sid, lease, task_id, chunk

    def _items(self, task_id: str, chunk: int) -> int:
        items, size = self.specs[task_id]
        return max(0, min(size, items - chunk * size))

    def _owned(self, sid: str, lease_id: int) -> bool:
        lease = self.core.leases.get(lease_id)
        return lease is not None and lease.session_id == sid

    def _payable(self) -> set[int]:
        """Leases whose result is persisted or on its way to the disk."""
        return set(self.store.result_of_lease) | {
            e.lease_id for turn in self.uncommitted for e in of_type(turn, fx.PersistResult)
        }

    @precondition(lambda self: self.core.leases)
    @rule(pick=PICK, honest=st.sampled_from([True, True, True, False]))
    def finish(self, pick: int, honest: bool) -> None:
        """A worker sends the result of a chunk it holds (a dishonest one, the right
        number of wrong outputs: only verification can tell)."""
        held = self._held(pick)
        if held is None:
            return
        worker, sid, lease_id, task_id, chunk = held
        n = self._items(task_id, chunk)
        body = output(n) if honest else msgspec.msgpack.encode([-1] * n)
        owned = self._owned(sid, lease_id)
        task = self.core.tasks.get(task_id)
        effects = self._turn(lambda eid, at: ResultIn(eid, at, sid, lease_id, body, "d"))
        worker.answered.add(lease_id)
        worker.sent[lease_id] = self.outputs[lease_id] = body
        paid = {t.lease_id: dict(t.entries).get(wallet(worker.account), 0)
                for t in of_type(effects, fx.PersistTransfer) if t.kind == "payout"}
        results = of_type(effects, fx.PersistResult)
        if not owned:
            assert not paid and not results
            return
        assert task is not None
        votes = [v.lease_id for v in of_type(effects, fx.PersistVote)]
        failed = [f.lease_id for f in of_type(effects, fx.PersistFailure)]
        assert len(results) + len(votes) + len(failed) == 1, f"{effects}"
        assert votes in ([], [lease_id]) and failed in ([], [lease_id])
        if task.verification == "none":
            assert [r.lease_id for r in results] == [lease_id]
            assert list(paid) == ([lease_id] if task.price else [])
        if results and task.price:
            assert results[0].lease_id in paid, "the accepted result's worker is not paid"
        said = [e.message for e in of_type(effects, fx.Send) if e.session_id == sid]
        assert Accepted(lease_id, paid.get(lease_id, 0)) in said

    @precondition(lambda self: self.core.leases)
    @rule(pick=PICK, how=st.sampled_from(["malformed", "retryable", "fatal"]))
    def falter(self, pick: int, how: str) -> None:
        """A worker sends a result with the wrong number of outputs, or a failure."""
        held = self._held(pick)
        if held is None:
            return
        worker, sid, lease_id, task_id, chunk = held
        owned = self._owned(sid, lease_id)
        if how == "malformed":
            body = output(self._items(task_id, chunk) + 1)
            effects = self._turn(lambda eid, at: ResultIn(eid, at, sid, lease_id, body, "d"))
        else:
            retry = how == "retryable"
            effects = self._turn(lambda eid, at: FailIn(eid, at, sid, lease_id, "boom", retry))
        worker.answered.add(lease_id)
        assert not of_type(effects, fx.PersistResult)
        assert all(t.kind == "refund" for t in of_type(effects, fx.PersistTransfer))
        assert len(of_type(effects, fx.PersistFailure)) == owned
        if owned and how == "malformed":
            said = [e.message for e in of_type(effects, fx.Send) if e.session_id == sid]
            assert Rejected(lease_id, "result does not match the chunk") in said

    @precondition(lambda self: any(w.sent for w in self.workers))
    @rule(pick=PICK)
    def resend(self, pick: int) -> None:
        """A result sent again (its ack was lost, or the worker is confused)."""
        self._settle()
        pairs = [(w, w.session, lease) for w in self.workers if w.session is not None
                 for lease in sorted(w.sent)]
        if not pairs:
            return
        worker, sid, lease_id = pairs[pick % len(pairs)]
        body = worker.sent[lease_id]
        first = lease_id not in self._payable() and self._owned(sid, lease_id)
        effects = self._turn(lambda eid, at: ResultIn(eid, at, sid, lease_id, body, "d"))
        if not first:
            assert not of_type(effects, fx.PersistResult)
            assert not of_type(effects, fx.PersistTransfer)
        key, epoch = self.acked.get(lease_id, ("", 0))
        said = [e.message for e in of_type(effects, fx.Send) if e.session_id == sid]
        if key == worker.key and [m for m in said if isinstance(m, Rejected)]:
            self._forgotten(lease_id, epoch, (
                f"{worker.key} was told accepted({lease_id}) in epoch {epoch}; its re-send "
                f"in epoch {self.epoch} is rejected: {said}"))

    def _forgotten(self, lease_id: int, epoch: int, why: str) -> None:
        """An accepted result the core answers for as if it never was: a failure, unless
        it is the known bug (RESEND_BUG: verification on, a restart since)."""
        verified = self.store.tasks[self.granted[lease_id][0]].verification != "none"
        if not (verified and epoch < self.epoch):
            raise AssertionError(why)
        if self.strict_resend:
            raise ResendBug(why)

    @precondition(lambda self: any(w.session for w in self.workers))
    @rule(index=st.integers(0, len(WORKERS) - 1), kind=st.sampled_from(["other", "dead", "none"]),
          pick=PICK, fail=st.booleans())
    def forged(self, index: int, kind: str, pick: int, fail: bool) -> None:
        """A result or failure for a lease this session does not hold: fenced off."""
        self._settle()
        worker = self.workers[index]
        sid = worker.session
        if sid is None:
            return
        pool = sorted(self.dead) if kind == "dead" else sorted(
            x for x, g in self.granted.items() if g[2] != worker.key)
        lease_id = pool[pick % len(pool)] if kind != "none" and pool else (1 << 62) + pick
        items = 1
        if lease_id in self.granted:
            task_id, chunk, _ = self.granted[lease_id]
            items = self._items(task_id, chunk)
        if self._owned(sid, lease_id):
            return  # only another's lease, or a dead one, never one this session holds
        body = output(items)
        if fail:
            effects = self._turn(lambda eid, at: FailIn(eid, at, sid, lease_id, "forged", False))
        else:
            effects = self._turn(lambda eid, at: ResultIn(eid, at, sid, lease_id, body, "x"))
        persisted = [e for e in effects if isinstance(e, fx.PERSISTENT)]
        assert not persisted, f"a forged answer for lease {lease_id} persisted {persisted}"

    # ---- deliveries ---------------------------------------------------------------------

    def _received_accepted(self, worker: Worker, message: Accepted) -> None:
        """Invariant 5: an ``accepted`` names a durable result and, when it credits the
        worker, its payout. Under verification it may name a vote (awaiting its verdict or
        cleared since) or the ack of the replica that decided a chunk or made it fail."""
        s, lease_id = self.store, message.lease_id
        task_id, _, key = self.granted[lease_id]
        assert key == worker.key, f"{worker.key} got accepted({lease_id}) of {key}"
        row = s.result_of_lease.get(lease_id) or s.votes_ever.get(lease_id)
        assert row is not None, (
            f"{worker.key} got accepted({lease_id}); neither its result nor a vote persisted")
        payout = s.payout_of_lease.get(lease_id)
        if lease_id in s.result_of_lease and s.tasks[task_id].price_per_chunk:
            assert payout is not None, f"accepted({lease_id}) delivered, no payout persisted"
        if message.credited:
            assert payout is not None
            share = dict(s.transfers[payout].entries).get(wallet(worker.account), 0)
            assert message.credited == share, f"{message} but the payout was {share}"
        self.acked.setdefault(lease_id, (worker.key, self.epoch))

    def _received_reply(self, reply: fx.Reply) -> None:
        """An ok reply tells its caller something is done: it is durable."""
        asked = self.requests.pop(reply.cause, None)
        if asked is None:
            return
        what, name, value = asked
        s = self.store
        match what:
            case "deposit":
                assert name in s.keys
            case "withdraw":
                t = s.transfers.get(value)
                assert t is not None and t.kind in ("withdrawal", "withdrawal_hold")
                assert t.entries[0] == (wallet(name), t.entries[0][1])
            case "decide":
                assert s.withdrawals[value].state == name
            case "task":
                assert name in s.tasks and s.tasks[name].budget == value
            case "fund":
                assert any(t.kind == "fund" and t.task_id == name and t.cause == reply.cause
                           for t in s.transfers.values())
            case "cancel":
                assert s.states[name][0] == "cancelled"
            case _:
                raise AssertionError(what)
