"""The invariants MoneyMachine checks after every step, in a mixin class it inherits."""

from __future__ import annotations

from hypothesis.stateful import invariant

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.invariants import check_invariants
from coordinator.core.ledger import PLATFORM, WORLD, entries_of, escrow, fee_split, wallet
from coordinator.core.lifecycle import TERMINAL_TASK_STATES
from coordinator.core.verification import digest
from tests.core.money_model import ACCOUNTS, TERMINAL, CapBug, named, nonzero
from tests.core.money_store import MoneyStore


class MoneyInvariants:
    """The @invariant methods of MoneyMachine, which sets the state they read."""

    config: CoreConfig
    core: Core
    store: MoneyStore
    uncommitted: list[list[fx.Effect]]
    asked_deposits: dict[str, set[tuple[str, int]]]
    granted: dict[int, tuple[str, int, str]]
    dead: set[int]
    revoked: set[int]
    acked: dict[int, tuple[str, int]]
    outputs: dict[int, bytes]
    boot_of: dict[int, int]
    strict_cap: bool

    @invariant()
    def core_invariants(self) -> None:
        check_invariants(self.core)

    @invariant()
    def persisted_ledger_balances(self) -> None:
        """Invariant 4 on disk: it sums to zero, nothing but the world is negative, and what
        the accounts hold is deposits minus withdrawals, each deposit one someone asked for."""
        s = self.store
        assert sum(s.balances.values()) == 0, f"the persisted ledger sums to {s.balances}"
        negative = {a: b for a, b in s.balances.items() if a != WORLD and b < 0}
        assert not negative, f"negative persisted balances {negative}"
        deposits = withdrawals = 0
        for t in s.transfers.values():
            assert sum(a for _, a in t.entries) == 0, f"unbalanced transfer {t}"
            world = sum(a for acc, a in t.entries if acc == WORLD)
            if t.kind == "deposit":
                assert t.key is not None and len(t.entries) == 2
                [_, (account, amount)] = t.entries
                assert (account.removeprefix("wallet:"), amount) in self.asked_deposits[t.key]
                deposits += amount
            elif t.kind == "withdrawal":
                withdrawals += world
            else:
                assert world == 0, f"a {t.kind} moved money to or from the world: {t}"
        held = sum(b for a, b in s.balances.items() if a != WORLD)
        assert held == deposits - withdrawals, (
            f"accounts hold {held}; deposits {deposits} minus withdrawals {withdrawals}")
        for account in ACCOUNTS:
            waiting = sum(w.amount for w in s.pending_withdrawals() if w.account_id == account)
            assert s.balances.get(f"pending:{account}", 0) == waiting

    @invariant()
    def persisted_escrow_and_payouts(self) -> None:
        """Each task's escrow is what was funded minus payouts minus refunds; every accepted
        chunk of a priced task is paid, with the fee split, to who produced it (once, or
        once per agreeing replica under verification), and nothing else is."""
        s = self.store
        flows: dict[str, dict[str, int]] = {t: {} for t in s.tasks}
        paid_chunks: dict[tuple[str, int], int] = {}
        for t in s.transfers.values():
            if t.task_id is not None:
                moved = dict(t.entries).get(escrow(t.task_id), 0)
                flow = flows[t.task_id]
                flow[t.kind] = flow.get(t.kind, 0) + moved
                flow[t.kind + "s"] = flow.get(t.kind + "s", 0) + 1
            if t.kind == "payout":  # to the accepted result's worker, or an agreeing replica's
                assert t.lease_id is not None and t.task_id is not None and t.chunk is not None
                accepted = s.results.get((t.task_id, t.chunk))
                assert accepted is not None, f"payout {t} for a chunk not accepted"
                task_id, chunk, key = self.granted[t.lease_id]
                assert (task_id, chunk) == (t.task_id, t.chunk), f"{t} for another chunk"
                if s.tasks[task_id].verification == "none":
                    assert t.lease_id == accepted.lease_id, f"{t} pays another than {accepted}"
                else:  # what that lease's worker sent agrees with the accepted result
                    assert digest(self.outputs[t.lease_id]) == accepted.digest, (
                        f"{t} pays a result that disagrees with {accepted}")
                price = s.tasks[task_id].price_per_chunk
                fee, share = fee_split(price, self.config.fee_bps)
                assert t.entries == list(entries_of(
                    (escrow(task_id), -price), (PLATFORM, fee),
                    (wallet(key.split("/")[0]), share)))
                paid_chunks[t.task_id, t.chunk] = paid_chunks.get((t.task_id, t.chunk), 0) + 1
        for task_id, spec in s.tasks.items():
            flow = flows[task_id]
            balance = s.balances.get(escrow(task_id), 0)
            assert balance == sum(flow.get(k, 0) for k in ("fund", "payout", "refund"))
            state = s.states[task_id][0]
            assert flow.get("refunds", 0) <= (state in TERMINAL)
            if state in TERMINAL:
                assert balance == 0, f"task {task_id} is {state} with {balance} in escrow"
            if state not in TERMINAL:  # it still covers the votes awaiting their verdict
                votes = sum(1 for v in s.votes.values() if v.task_id == task_id)
                assert balance >= votes * spec.price_per_chunk
            want = spec.quorum_m if spec.verification == "quorum" else 1
            for (tid, chunk), row in s.results.items():
                if tid == task_id and spec.price_per_chunk:
                    n = paid_chunks.get((tid, chunk), 0)
                    assert n >= want and (spec.verification != "none" or n == 1), (
                        f"chunk {tid}/{chunk} accepted from lease {row.lease_id}: {n} payouts")

    @invariant()
    def memory_matches_disk(self) -> None:
        """The in-memory ledger is the persisted one plus the turns on their way to disk."""
        projected = dict(self.store.balances)
        keys = set(self.store.keys)
        pending = {w.id for w in self.store.pending_withdrawals()}
        votes = {lease: (v.task_id, v.chunk_index) for lease, v in self.store.votes.items()}
        paid: dict[str, int] = {}
        for turn in self.uncommitted:
            for e in turn:
                if isinstance(e, fx.PersistVote):
                    votes[e.lease_id] = (e.task_id, e.chunk_index)
                elif isinstance(e, fx.PersistVotesCleared):
                    votes = {lease: (t, c) for lease, (t, c) in votes.items()
                             if t != e.task_id or e.chunk_index not in (None, c)}
                elif isinstance(e, fx.PersistTransfer):
                    for account, amount in e.entries:
                        projected[account] = projected.get(account, 0) + amount
                    if e.key is not None:
                        keys.add(e.key)
                    if e.kind == "payout" and e.task_id is not None:
                        paid[e.task_id] = paid.get(e.task_id, 0) - e.entries[0][1]
                elif isinstance(e, fx.PersistWithdrawal):
                    (pending.add if e.state == "pending" else pending.discard)(e.id)
        ledger = self.core.treasury.ledger
        assert nonzero(ledger.balances) == nonzero(projected)
        world = projected.get(WORLD, 0)
        assert ledger.deposited - ledger.withdrawn == -world
        assert ledger.keys == keys
        assert set(self.core.treasury.withdrawals) == pending
        held: dict[int, tuple[str, int]] = {}
        for task in self.core.tasks.values():
            assert task.spent == self.store.paid(task.id) + paid.get(task.id, 0)
            held |= {v.lease_id: (task.id, c) for c, vs in task.votes.items() for v in vs}
            assert task.votes_held == sum(len(vs) for vs in task.votes.values())
            if task.state not in TERMINAL_TASK_STATES:
                reserved = (task.leased + task.votes_held) * task.price
                assert ledger.balance(escrow(task.id)) >= reserved, (
                    f"task {task.id}'s escrow does not cover {task.leased} leases and "
                    f"{task.votes_held} votes at {task.price}")
        assert held == votes, "the votes in memory are not the persisted ones"

    @invariant()
    def spending_caps_hold(self) -> None:
        """A task with ``max_spend_per_minute`` pays at most that in any minute (as the core
        counts it: in whole seconds, a payout leaving the window 60 s after its second)."""
        paid: dict[str, list[tuple[int, int, int]]] = {}  # task -> second, amount, boot
        for t in self.store.transfers.values():
            cap = self.store.tasks[t.task_id].max_spend_per_minute if t.task_id else 0
            if t.kind == "payout" and t.task_id is not None and cap:
                amount = -dict(t.entries)[escrow(t.task_id)]
                paid.setdefault(t.task_id, []).append(
                    (t.at_ms // 1000, amount, self.boot_of[t.id]))
        for task_id, payouts in paid.items():
            cap = self.store.tasks[task_id].max_spend_per_minute
            for second, _, boot in payouts:
                minute = [(a, b) for s, a, b in payouts if second <= s < second + 60]
                why = (f"task {task_id} paid {sum(a for a, _ in minute)} in the minute from "
                       f"second {second}; its cap is {cap}: {sorted(payouts)}")
                assert sum(a for a, b in minute if b == boot) <= cap, why
                if self.strict_cap and sum(a for a, _ in minute) > cap:
                    raise CapBug(why)  # across a restart: the known bug CAP_BUG

    @invariant()
    def no_lease_paid_twice_or_after_it_ended(self) -> None:
        """A lease that ended without its result kept (revoked, expired, cancelled, failed,
        lost in a crash) is never paid; the store itself refuses a second payout."""
        s = self.store
        named_ = {lease for turn in self.uncommitted for lease in named(turn)}
        kept = set(s.result_of_lease) | set(s.votes_ever) | set(s.payout_of_lease) | named_
        assert set(s.payout_of_lease) <= set(self.outputs), "a lease paid for no result"
        assert not self.dead & kept, f"ended leases kept or paid: {sorted(self.dead & kept)}"
        assert self.revoked <= self.dead, f"revoked, still live: {self.revoked - self.dead}"
        for lease_id in self.acked:  # nothing acknowledged is ever lost
            task_id, chunk, _ = self.granted[lease_id]
            assert lease_id in kept or (task_id, chunk) in s.results or any(
                f.lease_id == lease_id for f in s.failures)
