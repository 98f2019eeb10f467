"""Money in the core, from hand-made events: escrow, payouts and fees, refunds,
'needs funds', spending caps, deposits and withdrawals."""

from __future__ import annotations

import msgspec

from coordinator.core import effects as fx
from coordinator.core.core import Core, CoreConfig
from coordinator.core.events import (
    Deposit,
    Event,
    HeartbeatIn,
    ResultIn,
    SessionHello,
    TaskCancel,
    TaskFund,
    TaskSubmitted,
    Tick,
    Withdraw,
    WithdrawalDecision,
)
from coordinator.core.invariants import check_invariants
from coordinator.core.ledger import PLATFORM, WORLD, escrow, pending, wallet
from schema.worker import PROTOCOL_VERSION, Accepted

CUSTOMER, WORKER = "alice", "bob"


def step(core: Core, event: Event) -> list[fx.Effect]:
    effects = core.handle(event)
    check_invariants(core)
    return effects


def new_core(fee_bps: int = 1000) -> Core:
    return Core(CoreConfig(fee_bps=fee_bps), epoch=1)


def deposit(core: Core, eid: int, amount: int, account: str = CUSTOMER) -> list[fx.Effect]:
    return step(core, Deposit(eid, eid, account, amount, f"dep-{eid}", "sandbox"))


def submit(eid: int, *, chunks: int = 4, price: int = 100, budget: int = 400,
           cap: int = 0, task_id: str = "t1") -> TaskSubmitted:
    return TaskSubmitted(eid, eid, task_id, CUSTOMER, "", chunks, chunks, 1, 100, 3, 60_000,
                         [], "code", price, budget, cap)


def hello(eid: int, slots: int = 1) -> SessionHello:
    return SessionHello(eid, eid, "s1", WORKER, "w1", [], slots, [], PROTOCOL_VERSION)


def leases(effects: list[fx.Effect]) -> list[int]:
    return [e.lease_id for e in effects if isinstance(e, fx.AssignChunk)]


def finish_one(core: Core, eid: int, lease_id: int) -> list[fx.Effect]:
    return step(core, ResultIn(eid, eid, "s1", lease_id, msgspec.msgpack.encode([1]), "d"))


def replies(effects: list[fx.Effect]) -> list[fx.Reply]:
    return [e for e in effects if isinstance(e, fx.Reply)]


def test_budget_moves_to_escrow_and_each_chunk_pays_fee_and_worker() -> None:
    core = new_core(fee_bps=1000)
    deposit(core, 1, 1000)
    step(core, submit(2, chunks=4, price=105, budget=420))
    led = core.treasury.ledger
    assert (led.balance(wallet(CUSTOMER)), led.balance(escrow("t1"))) == (580, 420)
    [lease] = leases(step(core, hello(3)))
    effects = finish_one(core, 4, lease)
    assert Accepted(lease, 95) in [e.message for e in effects if isinstance(e, fx.Send)]
    assert led.balance(PLATFORM) == 10 and led.balance(wallet(WORKER)) == 95  # 10.5 rounds down
    payout = [e for e in effects if isinstance(e, fx.PersistTransfer)]
    assert [(p.kind, p.task_id, p.chunk, p.lease_id) for p in payout] == [
        ("payout", "t1", 0, lease)]
    assert sum(a for _, a in payout[0].entries) == 0


def test_a_budget_over_the_wallet_is_refused_with_the_shortfall() -> None:
    core = new_core()
    deposit(core, 1, 300)
    [reply] = replies(step(core, submit(2, budget=400)))
    assert (reply.ok, reply.status) == (False, 402)
    assert "short by 100" in reply.error
    assert "t1" not in core.tasks and core.treasury.ledger.balance(wallet(CUSTOMER)) == 300


def test_finishing_returns_what_is_left_in_escrow() -> None:
    core = new_core()
    deposit(core, 1, 1000)
    step(core, submit(2, chunks=2, price=100, budget=500))
    step(core, hello(3, slots=2))
    for i, lease in enumerate(sorted(core.leases)):
        finish_one(core, 10 + i, lease)
    led = core.treasury.ledger
    assert core.tasks["t1"].state.label == "completed"
    assert led.balance(escrow("t1")) == 0
    assert led.balance(wallet(CUSTOMER)) == 1000 - 200  # 300 came back
    assert core.tasks["t1"].spent == 200


def test_cancel_revokes_unpaid_leases_and_refunds_everything_left() -> None:
    core = new_core()
    deposit(core, 1, 1000)
    step(core, submit(2, chunks=4, price=100, budget=400))
    [first] = leases(step(core, hello(3)))
    [second] = leases(finish_one(core, 4, first))  # one paid; the next chunk is leased
    step(core, TaskCancel(5, 5, "t1"))
    led = core.treasury.ledger
    assert led.balance(escrow("t1")) == 0
    assert led.balance(wallet(CUSTOMER)) == 900 and led.balance(wallet(WORKER)) == 90
    late = finish_one(core, 6, second)
    assert not [e for e in late if isinstance(e, fx.PersistTransfer)]  # revoked: never paid


def test_a_task_that_cannot_pay_for_its_next_chunk_waits_and_a_top_up_resumes_it() -> None:
    core = new_core()
    deposit(core, 1, 1000)
    step(core, submit(2, chunks=4, price=100, budget=150))
    [lease] = leases(step(core, hello(3, slots=2)))  # only one chunk is covered
    assert core.tasks["t1"].leased == 1
    finish_one(core, 4, lease)
    task = core.tasks["t1"]
    assert task.leased == 0 and core.treasury.needs(task) == 3 * 100 - 50
    effects = step(core, TaskFund(5, 5, "t1", 300))
    assert len(leases(effects)) == 2  # both free slots get work at once
    assert replies(effects)[0].ok


def test_a_top_up_beyond_the_wallet_is_refused() -> None:
    core = new_core()
    deposit(core, 1, 100)
    step(core, submit(2, budget=0))
    [reply] = replies(step(core, TaskFund(3, 3, "t1", 101)))
    assert (reply.ok, reply.status) == (False, 402) and "short by 1" in reply.error


def test_spending_cap_per_minute_holds_leases_until_the_window_moves() -> None:
    core = new_core()
    deposit(core, 1, 10_000)
    step(core, submit(2, chunks=10, price=100, budget=1000, cap=200))
    assert len(leases(step(core, hello(3, slots=5)))) == 2
    for lease in sorted(core.leases):
        finish_one(core, 4, lease)
    assert core.tasks["t1"].leased == 0  # 200 spent this minute: nothing more yet
    step(core, HeartbeatIn(5, 60_500, "s1"))
    assert len(leases(step(core, Tick(6, 61_000)))) == 2


def test_a_deposit_key_is_credited_once() -> None:
    core = new_core()
    for eid in (1, 2):
        step(core, Deposit(eid, eid, CUSTOMER, 500, "stripe:evt_1", "stripe"))
    assert core.treasury.ledger.balance(wallet(CUSTOMER)) == 500


def test_pending_withdrawal_holds_funds_until_an_admin_decides() -> None:
    core = new_core()
    deposit(core, 1, 1000, WORKER)
    [r] = replies(step(core, Withdraw(2, 2, WORKER, 400, direct=False)))
    assert (r.ok, r.status) == (True, 202)
    led = core.treasury.ledger
    assert (led.balance(wallet(WORKER)), led.balance(pending(WORKER))) == (600, 400)
    step(core, WithdrawalDecision(3, 3, r.value, approve=False))
    assert led.balance(wallet(WORKER)) == 1000
    [r2] = replies(step(core, Withdraw(4, 4, WORKER, 1000, direct=False)))
    step(core, WithdrawalDecision(5, 5, r2.value, approve=True))
    assert led.balance(wallet(WORKER)) == 0 and led.balance(WORLD) == 0
    [again] = replies(step(core, WithdrawalDecision(6, 6, r2.value, approve=True)))
    assert again.status == 404


def test_an_overdraft_withdrawal_is_refused_and_changes_nothing() -> None:
    core = new_core()
    deposit(core, 1, 100, WORKER)
    [r] = replies(step(core, Withdraw(2, 2, WORKER, 101, direct=True)))
    assert (r.ok, r.status) == (False, 402)
    assert core.treasury.ledger.balance(wallet(WORKER)) == 100
