"""Scheduling rules of issue 4, each from events built by hand: verification (spot checks,
quorum), votes across a restart, and the money of replicas: who is paid, when, and what the
escrow holds for votes awaiting a verdict. The bench and its defaults are in
``rules_bench.py``; adaptive trust is in ``test_rules_trust.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from coordinator.core import effects as fx
from coordinator.core.events import SessionClosed, TaskFund
from coordinator.core.invariants import check_invariants
from coordinator.core.ledger import PLATFORM, escrow, wallet
from coordinator.core.lifecycle import ChunkState, TaskState
from coordinator.core.state import Task, Vote, worker_key
from schema.worker import Accepted
from tests.core.rules_bench import GRACE, LEASE, Bench, assigned, encode, messages, of, run_all

# ---- quorum -------------------------------------------------------------------------------


def quorum_bench(price: int = 100, chunks: int = 1, budget: int | None = None) -> Bench:
    b = Bench()
    b.deposit("alice", 10_000)
    b.submit("q", chunks, verification="quorum", k=3, m=2, price=price,
             budget=3 * price * chunks if budget is None else budget)
    return b


def test_quorum_two_of_three_accepts_when_two_accounts_agree_and_never_runs_a_third() -> None:
    b = quorum_bench(price=100)
    b.hello("A", "acct-a")
    [a] = b.leases("A")
    effects = b.answer("A", a)
    assert of(effects, fx.PersistResult) == [] and len(of(effects, fx.PersistVote)) == 1
    assert messages(effects, Accepted) == [("A", Accepted(a, 0))]  # held; paid at the verdict
    task = b.core.tasks["q"]
    assert (task.votes_held, task.chunk_state[0], task.done) == (1, ChunkState.PENDING, 0)
    assert assigned(b.tick(100)) == []  # the only worker already voted
    b.hello("B", "acct-b")
    b.hello("C", "acct-c")
    [bl] = b.leases("B")
    assert b.leases("C") == []  # one replica at a time: a chunk has at most one lease
    effects = b.answer("B", bl)
    [row] = of(effects, fx.PersistResult)
    assert (row.lease_id, row.account_id, row.output) == (a, "acct-a", encode(0))
    assert messages(effects, Accepted) == [("B", Accepted(bl, 90))]
    assert task.state is TaskState.COMPLETED and task.votes == {} and task.votes_held == 0
    assert not any(sid == "C" for sid, _, _ in assigned(b.log))  # the third never ran
    account_of = {a: "acct-a", bl: "acct-b"}
    paid = b.payouts()
    assert sorted(p.lease_id for p in paid if p.lease_id is not None) == sorted(account_of)
    for p in paid:  # each agreeing replica: the price, split into the fee and its share
        assert p.lease_id is not None
        assert sorted(p.entries) == sorted([(escrow("q"), -100), (PLATFORM, 10),
                                            (wallet(account_of[p.lease_id]), 90)])
    assert (b.balance(wallet("acct-a")), b.balance(wallet("acct-b")),
            b.balance(wallet("acct-c"))) == (90, 90, 0)
    assert b.balance(PLATFORM) == 20
    assert b.balance(wallet("alice")) == 10_000 - 200  # the unused third came back
    # a re-sent result is acknowledged again and paid no second time
    assert b.answer("A", a) == [fx.Send(b.eid, "A", Accepted(a))]
    assert len(b.payouts()) == 2


def test_a_disagreeing_replica_is_not_paid_and_loses_its_streak() -> None:
    b = Bench()
    b.deposit("alice", 10_000)
    b.hello("A", "acct-a")
    b.hello("B", "acct-b")
    b.submit("warm", 1, verification="quorum", k=3, m=2, price=100, budget=300)
    for _ in range(3):  # A and B agree: both validated
        for sid in ("A", "B"):
            for x in b.leases(sid):
                b.answer(sid, x)
        b.tick(b.now + 100)
    standing_b = b.core.trust.of(worker_key("acct-b", "B"))
    assert (standing_b.streak, standing_b.valid) == (1, 1)
    b.submit("q", 1, verification="quorum", k=3, m=2, price=100, budget=300)
    first = b.holder("q", 0)
    assert first is not None
    b.answer(first, b.leases(first, "q")[0], None if first == "A" else 999)
    b.tick(b.now + 100)
    second = b.holder("q", 0)
    assert second is not None and second != first
    b.answer(second, b.leases(second, "q")[0], None if second == "A" else 999)
    assert b.core.tasks["q"].votes_held == 2  # they disagree: a third decides
    b.hello("C", "acct-c")
    [c] = b.leases("C")
    effects = b.answer("C", c)
    [row] = of(effects, fx.PersistResult)
    assert (row.account_id, row.output) == ("acct-a", encode(0))
    paid = {p.lease_id for p in of(effects, fx.PersistTransfer) if p.kind == "payout"}
    assert paid == {row.lease_id, c}  # A's vote (the first that agreed) and C's
    assert b.balance(wallet("acct-b")) == 90  # only for the chunk it got right
    assert (standing_b.streak, standing_b.invalid) == (0, 1)
    standing_a = b.core.trust.of(worker_key("acct-a", "A"))
    assert (standing_a.streak, standing_a.invalid) == (2, 0)


def test_replicas_never_go_twice_to_one_account() -> None:
    b = Bench()
    b.hello("A1", "acct-a")
    b.hello("A2", "acct-a")  # a second worker of the same account
    b.submit("q", 1, verification="quorum", k=2, m=2)
    first = b.holder("q", 0)
    assert first in ("A1", "A2")
    other = "A2" if first == "A1" else "A1"
    b.answer(first, b.leases(first)[0])
    assert assigned(b.tick(100)) == []
    assert b.why(other) == ["task q: its pending chunks need a different worker "
                            "(verification or retry on another account)"]
    effects = b.hello("B", "acct-b")
    assert assigned(effects) == [("B", "q", 0)]
    [row] = of(b.answer("B", b.leases("B")[0]), fx.PersistResult)
    assert row.account_id == "acct-a" and b.core.tasks["q"].state is TaskState.COMPLETED
    accounts = [b.core.sessions[sid].account_id for sid, _, _ in assigned(b.log)]
    assert sorted(accounts) == ["acct-a", "acct-b"]


@pytest.mark.parametrize("how", ["closed", "silent"])
def test_a_quorum_member_that_disconnects_hands_its_replica_to_another_account(
    how: str
) -> None:
    b = quorum_bench(price=100)
    b.hello("A", "acct-a")
    [a] = b.leases("A")
    b.answer("A", a)  # A's vote is in
    b.hello("B", "acct-b")
    [lost] = b.leases("B")
    if how == "closed":
        b.ev(SessionClosed, "B", "connection lost")
        assert b.core.leases[lost].session_id is None  # orphaned: B may still come back
        b.hello("C", "acct-c")
        assert b.leases("C") == []
        effects = b.tick(GRACE + 1)
    else:
        b.hello("C", "acct-c")
        effects = b.tick(LEASE + 1, beat=["A", "C"])
        assert fx.CloseSession(b.eid, "B", 4001, f"no heartbeat for {LEASE} ms") in effects
    assert assigned(effects) == [("C", "q", 0)]  # the chunk came back and went on at once
    assert [sid for sid, _, _ in assigned(b.log)] == ["A", "B", "C"]  # never A again
    b.ev(SessionClosed, "A")  # a voter that leaves is still paid when its vote wins
    effects = b.answer("C", b.leases("C")[0])
    assert len(of(effects, fx.PersistResult)) == 1
    assert of(b.log, fx.PersistFailure) == [] and b.core.tasks["q"].failures == {}
    assert worker_key("acct-b", "B") not in b.core.trust.workers  # a death blames nobody
    assert (b.balance(wallet("acct-a")), b.balance(wallet("acct-b")),
            b.balance(wallet("acct-c"))) == (90, 0, 90)


def test_a_restart_keeps_the_votes_and_the_chunk_completes_on_another_account() -> None:
    b = quorum_bench(price=100, chunks=2)
    b.hello("A", "acct-a", slots=2)
    a0, a1 = b.leases("A")
    b.answer("A", a0)
    b.answer("A", a1, 777)  # wrong on chunk 1
    b.ev(SessionClosed, "A")
    # the store: what load_tasks and load_money hand a freshly booted core
    [row] = of(b.log, fx.PersistTask)
    votes = of(b.log, fx.PersistVote)
    task = Task(
        id=row.task_id, owner=row.owner, name=row.name, chunks_total=row.chunks_total,
        items_total=row.items_total, chunk_size=row.chunk_size,
        max_concurrency=row.max_concurrency, max_attempts=row.max_attempts,
        chunk_timeout_ms=row.chunk_timeout_ms, requirements=list(row.requirements),
        code_ref=row.code_ref, created_ms=row.created_ms, price=row.price_per_chunk,
        budget=row.budget, priority=row.priority, verification=row.verification,
        quorum_k=row.quorum_k, quorum_m=row.quorum_m, spot_per_mille=row.spot_per_mille,
        salt=row.salt,
    )
    for v in sorted(votes, key=lambda v: v.lease_id):
        task.votes.setdefault(v.chunk_index, []).append(
            Vote(v.lease_id, v.account_id, v.worker_id, v.digest, v.output, v.at_ms))
        task.votes_held += 1
    ledger = b.core.treasury.ledger
    r = Bench(epoch=2)
    r.now = b.now + 5000
    r.core.restore_money(dict(ledger.balances), sorted(ledger.keys), ledger.deposited,
                         ledger.withdrawn, [])
    r.core.restore_task(task, [], {}, {})
    check_invariants(r.core)
    r.hello("A", "acct-a", slots=2)
    assert r.leases("A") == []  # both chunks hold its vote: not for it again
    r.hello("B", "acct-b", slots=2)
    b0, b1 = sorted(r.leases("B"), key=lambda x: r.core.leases[x].chunk)
    [row0] = of(r.answer("B", b0), fx.PersistResult)
    assert (row0.chunk_index, row0.lease_id, row0.account_id) == (0, a0, "acct-a")
    assert of(r.answer("B", b1), fx.PersistResult) == []  # 1 against A's wrong one: more
    r.hello("C", "acct-c")
    r.tick(r.now + 100)
    [c1] = r.leases("C")
    [row1] = of(r.answer("C", c1), fx.PersistResult)
    assert (row1.chunk_index, row1.lease_id, row1.output) == (1, b1, encode(10))
    assert r.core.tasks["q"].state is TaskState.COMPLETED
    paid = sorted((p.chunk, p.lease_id) for p in r.payouts())
    assert paid == sorted([(0, a0), (0, b0), (1, b1), (1, c1)])
    bal = r.core.treasury.ledger.balance
    assert (bal(wallet("acct-a")), bal(wallet("acct-b")), bal(wallet("acct-c"))) == (
        90, 180, 90)
    assert bal(wallet("alice")) == 10_000 - 400 and bal(escrow("q")) == 0
    assert r.core.trust.of(worker_key("acct-a", "A")).invalid == 1


def test_escrow_reserves_for_votes_awaiting_a_verdict() -> None:
    b = Bench()
    b.deposit("alice", 10_000)
    b.hello("A", "acct-a", slots=3)
    b.submit("q", 3, verification="quorum", k=3, m=2, price=100, budget=300)
    assert b.in_flight("q") == 3  # 300 in escrow covers three chunks in flight
    b.answer("A", b.leases("A")[0])
    task = b.core.tasks["q"]
    assert (task.leased, task.votes_held, b.core.treasury.reserved(task)) == (2, 1, 300)
    b.hello("B", "acct-b")
    assert b.leases("B") == [] and b.why("B") == ["task q needs funds"]
    effects = b.ev(TaskFund, "q", 100)
    assert assigned(effects) == [("B", "q", 0)]
    b.answer("B", b.leases("B")[0])  # agrees: both replicas are paid, once each
    assert [(p.chunk, -dict(p.entries)[escrow("q")]) for p in b.payouts()] == [
        (0, 100), (0, 100)]
    assert b.balance(escrow("q")) == 200 and b.core.treasury.reserved(task) == 200


# ---- spot checks --------------------------------------------------------------------------


@pytest.mark.parametrize(("per_mille", "second_opinions"), [(1000, 12), (0, 0)])
def test_spot_checks_all_or_none(per_mille: int, second_opinions: int) -> None:
    b = Bench()
    b.hello("A", "acct-a", slots=3)
    b.hello("B", "acct-b", slots=3)
    b.submit("s", 12, verification="spot", spot=per_mille, salt="salt")
    run_all(b, "s")
    assert len(of(b.log, fx.PersistVote)) == second_opinions
    rows = of(b.log, fx.PersistResult)
    assert sorted(r.chunk_index for r in rows) == list(range(12))
    if per_mille:  # each accepted chunk ran on both accounts
        runs = Counter(e.chunk_index for e in of(b.log, fx.AssignChunk))
        assert runs == dict.fromkeys(range(12), 2)
