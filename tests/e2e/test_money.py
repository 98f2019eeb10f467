"""Money end to end: real coordinator and ``tn-worker`` processes, balances checked against
arithmetic done here.

Two coordinators serve the module: ``paid`` in sandbox mode (every account starts with
``INITIAL`` credits, a 10 % fee) with two workers of two different worker accounts, and
``stripe`` with sandbox off and Stripe pointed at a local stand-in (tests/e2e/
stripe_standin.py). The extra accounts are made through ``coordinator.accounts`` before a
coordinator starts (there is no REST route for accounts). The kill -9 test has its own.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.accounts import Accounts, Role
from coordinator.store.sqlite import SqliteStore
from tests.e2e import stripe_standin
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator, Worker, wait_until
from tests.e2e.rest import Api, Response

INITIAL = 50_000  # DEV_INITIAL_WALLET: 500.00 credits
PRICE = 105  # with a 10 % fee: 10 to the platform (10.5 rounded down), 95 to the worker
FEE, SHARE = 10, 95
MONEY_ENV = {**FAST_ENV, "DEV_INITIAL_WALLET": str(INITIAL), "PLATFORM_FEE_PERCENT": "10",
             "WALLET_SANDBOX_ENABLED": "true"}
STEADY = """\
import time

def process(item):
    time.sleep(0.03)
    return item * 2
"""


async def _create_accounts(db: Path, wanted: dict[str, Role]) -> dict[str, str]:
    """Accounts made before the coordinator starts; returns a token for each name."""
    store = await SqliteStore.open(db)
    try:
        accounts = Accounts(store)
        return {name: await accounts.issue_token(await accounts.create(name, role), "e2e")
                for name, role in wanted.items()}
    finally:
        await store.close()


def post(api: Api, path: str, body: dict[str, Any] | None = None) -> Response:
    raw = None if body is None else json.dumps(body).encode()
    return api.call("POST", path, raw, "application/json" if body is not None else None)


def wallet(api: Api) -> dict[str, Any]:
    doc: dict[str, Any] = api.ok("GET", "/api/wallet")
    return doc


def ledger(admin: Api) -> dict[str, Any]:
    doc: dict[str, Any] = admin.ok("GET", "/api/admin/ledger")
    held = doc["wallets"] + doc["escrow"] + doc["pending"] + doc["platform"]
    assert held == doc["deposited"] - doc["withdrawn"], doc
    return doc


def earned_on(api: Api, task_id: str) -> tuple[int, int]:
    """(chunks, credited) of ``task_id`` in the caller's earnings."""
    doc = api.ok("GET", "/api/wallet/earnings")
    assert doc["total"] == sum(t["credited"] for t in doc["tasks"])
    for t in doc["tasks"]:
        if t["task_id"] == task_id:
            return t["chunks"], t["credited"]
    return 0, 0


# ---- the sandbox coordinator with two worker accounts ----------------------------------


@dataclass
class Paid:
    coordinator: Coordinator
    workers: list[Worker]
    customer: Api
    other: Api  # another customer
    racer: Api  # a customer whose balance the withdrawal race uses
    worker_apis: dict[str, Api]  # worker id -> its account's REST client
    admin: Api


@pytest.fixture(scope="module")
def paid(module_cluster: Cluster) -> Iterator[Paid]:
    coord = module_cluster.coordinator(MONEY_ENV, start=False)
    tokens = asyncio.run(_create_accounts(coord.data_dir / "coordinator.sqlite3", {
        "worker-two": "worker", "racer": "customer", "other": "customer"}))
    coord.start()
    workers = [
        module_cluster.worker(coord, "pay-w1", slots=2, wait=False),
        module_cluster.worker(coord, "pay-w2", slots=2, wait=False,
                              extra_args=["--token", tokens["worker-two"]]),
    ]
    for w in workers:
        w.wait_connected()
    yield Paid(coord, workers, coord.api(), coord.api(tokens["other"]),
               coord.api(tokens["racer"]),
               {"pay-w1": coord.api(coord.worker_token),
                "pay-w2": coord.api(tokens["worker-two"])},
               coord.api(coord.admin_token))


def test_starting_credit_once_per_account(paid: Paid) -> None:
    for api in (paid.other, paid.racer, *paid.worker_apis.values(), paid.admin):
        w = wallet(api)
        assert w["sandbox"] is True and w["stripe"] is False
        assert w["balance"] == INITIAL, w
    page = paid.other.ok("GET", "/api/wallet/transactions")
    assert [(t["kind"], t["amount"], t["memo"]) for t in page["transactions"]] == [
        ("deposit", INITIAL, "initial")]


def test_sandbox_deposit_and_withdraw_directly(paid: Paid) -> None:
    admin = paid.admin  # any account has a wallet; the admin's is used by no other test
    start = wallet(admin)["balance"]
    body = {"amount": 1234, "idempotency_key": "dep-1"}
    first, again = post(admin, "/api/wallet/deposit", body), post(admin, "/api/wallet/deposit",
                                                                   body)
    assert (first.status, first.json["balance"]) == (201, start + 1234), first.raw
    assert (again.status, again.json["balance"]) == (200, start + 1234), again.raw  # once
    out = post(admin, "/api/wallet/withdraw", {"amount": 34})
    assert out.status == 201 and out.json["state"] == "done", out.raw
    assert (out.json["balance"], out.json["pending_withdrawals"]) == (start + 1200, 0)
    over = post(admin, "/api/wallet/withdraw", {"amount": start + 1201})
    assert over.status == 402, over.raw
    kinds = [(t["kind"], t["amount"], t["id"]) for t in
             admin.ok("GET", "/api/wallet/transactions?limit=2")["transactions"]]
    assert kinds == [("withdrawal", -34, out.json["id"]), ("deposit", 1234, kinds[1][2])]
    page = admin.ok("GET", "/api/wallet/transactions?offset=1&limit=1")
    assert page["transactions"][0]["kind"] == "deposit" and page["next_offset"] == 2
    assert post(admin, "/api/wallet/deposit", {"amount": 1, "method": "checkout"}).status == 400
    assert admin.call("GET", "/api/wallet/transactions?limit=0").status == 400


def test_paid_run_exact_balances(paid: Paid) -> None:
    customer, admin = paid.customer, paid.admin
    chunks, budget = 12, 12 * PRICE + 250
    before = {wid: wallet(api)["balance"] for wid, api in paid.worker_apis.items()}
    customer_before = wallet(customer)["balance"]
    platform_before = ledger(admin)["platform"]

    task_id = customer.submit(STEADY, list(range(chunks * 2)),
                              {"chunk_size": 2, "price_per_chunk": PRICE, "budget": budget})["id"]
    info = customer.wait_state(task_id, timeout_s=30, watch=tuple(paid.workers))

    assert info["state"] == "completed", info
    assert info["spent"] == chunks * PRICE
    assert (info["reserved"], info["remaining"], info["funds_needed"]) == (0, 0, 0)
    assert wallet(customer)["balance"] == customer_before - chunks * PRICE  # 250 came back
    assert wallet(customer)["in_escrow"] == 0
    spread = Counter(c["worker"] for c in customer.chunks(task_id))
    assert sum(spread.values()) == chunks
    for wid, api in paid.worker_apis.items():
        n = spread.get(wid, 0)
        assert earned_on(api, task_id) == (n, n * SHARE), wid
        assert wallet(api)["balance"] == before[wid] + n * SHARE, wid
    after = ledger(admin)
    assert after["platform"] == platform_before + chunks * FEE
    assert after["escrow"] == 0
    history = customer.ok("GET", "/api/wallet/transactions?limit=5")["transactions"]
    mine = [(t["kind"], t["amount"]) for t in history if t["task_id"] == task_id]
    assert mine == [("refund", 250), ("fund", -budget)]


def test_needs_funds_then_fund_resumes(paid: Paid) -> None:
    customer = paid.customer
    start = wallet(customer)["balance"]
    task_id = customer.submit(STEADY, list(range(6)), {
        "chunk_size": 1, "price_per_chunk": 100, "budget": 300})["id"]
    stalled = wait_until(lambda: customer.task(task_id), 20, "the escrow to run out",
                         ready=lambda i: i["chunks_done"] == 3 and i["chunks_leased"] == 0,
                         watch=tuple(paid.workers))
    assert stalled["state"] == "running" and stalled["needs_funds"] is True, stalled
    assert stalled["funds_needed"] == 300 and stalled["chunks_pending"] == 3
    assert stalled["remaining"] == 0

    path = f"/api/tasks/{task_id}/fund"
    assert post(paid.other, path, {"amount": 300}).status == 404  # not theirs
    assert post(customer, "/api/tasks/t_nope/fund", {"amount": 300}).status == 404
    for bad in (0, -5, 1.5, "300", True, None):
        resp = post(customer, path, {"amount": bad})
        assert resp.status == 400, (bad, resp.raw)
        assert resp.json["field"] == "amount", resp.raw
    over = post(customer, path, {"amount": 10**13})
    assert over.status == 400 and "TN_MONEY_AMOUNT_MAX" in over.json["error"]
    short = post(customer, path, {"amount": start})  # the wallet holds start - 300
    assert short.status == 402 and "short by 300" in short.json["error"], short.raw
    assert customer.task(task_id)["chunks_done"] == 3  # nothing ran meanwhile

    funded = post(customer, path, {"amount": 300})
    assert funded.status == 200 and funded.json["needs_funds"] is False, funded.raw
    info = customer.wait_state(task_id, timeout_s=20, watch=tuple(paid.workers))
    assert info["state"] == "completed" and info["spent"] == 600
    assert wallet(customer)["balance"] == start - 600
    late = post(customer, path, {"amount": 100})
    assert late.status == 409, late.raw


def test_cancel_refunds_the_rest(paid: Paid) -> None:
    customer = paid.customer
    start = wallet(customer)["balance"]
    slow = "import time\n\ndef process(item):\n    time.sleep(10)\n    return item\n"
    task_id = customer.submit(slow, list(range(8)), {
        "chunk_size": 1, "price_per_chunk": 100, "budget": 800})["id"]
    wait_until(lambda: customer.task(task_id), 20, "chunks leased",
               ready=lambda i: i["chunks_leased"] > 0, watch=tuple(paid.workers))
    assert wallet(customer)["balance"] == start - 800
    assert wallet(customer)["in_escrow"] == 800

    resp = customer.cancel(task_id)

    assert resp.status == 200 and resp.json["state"] == "cancelled", resp.raw
    assert resp.json["spent"] == 0  # leases in flight are revoked, never paid
    assert wallet(customer)["balance"] == start
    assert wallet(customer)["in_escrow"] == 0
    assert ledger(paid.admin)["escrow"] == 0


def _race(calls: list[Callable[[], Response]]) -> list[Response]:
    """Run ``calls`` at once in threads, released together."""
    barrier = threading.Barrier(len(calls))
    out: list[Response | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


def test_racing_withdrawals_and_task_creations(paid: Paid) -> None:
    racer, amount = paid.racer, 7_000
    assert wallet(racer)["balance"] == INITIAL
    results = _race([lambda: post(racer, "/api/wallet/withdraw", {"amount": amount})] * 20)
    statuses = Counter(r.status for r in results)
    fits = INITIAL // amount  # 7 fit in 50 000; 13 are refused
    assert statuses == {201: fits, 402: 20 - fits}, statuses
    assert wallet(racer)["balance"] == INITIAL - fits * amount >= 0
    refused = next(r for r in results if r.status == 402)
    assert "you can withdraw at most" in refused.json["error"]

    other = paid.other
    budget = INITIAL * 3 // 5  # two of these do not fit in one wallet
    code = "def process(x):\n    return x\n"
    spec = {"chunk_size": 1, "price_per_chunk": 1, "budget": budget}
    created = _race([lambda: other.post_task(_parts(code, spec))] * 2)
    assert sorted(r.status for r in created) == [201, 402], [r.raw for r in created]
    assert "short by" in next(r for r in created if r.status == 402).json["error"]
    task_id = next(r for r in created if r.status == 201).json["id"]
    other.wait_state(task_id, timeout_s=20, watch=tuple(paid.workers))
    assert wallet(other)["balance"] == INITIAL - 1  # one chunk of price 1; the rest returned
    ledger(paid.admin)


def _parts(code: str, spec: dict[str, Any]) -> list[tuple[str, str | None, bytes]]:
    return [("code", "main.py", code.encode()), ("data", "data.json", b"[1]"),
            ("spec", None, json.dumps(spec).encode())]


# ---- Stripe: sandbox off, the official library against a local stand-in -----------------

SECRET = "whsec_e2e_standin"
PUBLIC_URL = "http://127.0.0.1:9/tn"


@dataclass
class StripeStack:
    coordinator: Coordinator
    standin: stripe_standin.StripeStandIn
    customer: Api
    worker: Api
    admin: Api


@pytest.fixture(scope="module")
def stripe_stack(module_cluster: Cluster) -> Iterator[StripeStack]:
    standin = stripe_standin.start()
    try:
        coord = module_cluster.coordinator({
            **MONEY_ENV, "WALLET_SANDBOX_ENABLED": "false",
            "STRIPE_SECRET_KEY": "sk_test_e2e_standin", "STRIPE_WEBHOOK_SECRET": SECRET,
            "STRIPE_API_BASE": standin.url, "TN_PUBLIC_URL": PUBLIC_URL,
        })
        yield StripeStack(coord, standin, coord.api(), coord.api(coord.worker_token),
                          coord.api(coord.admin_token))
    finally:
        standin.close()


def deliver(s: StripeStack, payload: bytes, signature: str | None) -> Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    req = urllib.request.Request(s.coordinator.url + "/api/stripe/webhook", data=payload,
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, err.read())


def test_stripe_checkout_and_webhook(stripe_stack: StripeStack) -> None:
    s = stripe_stack
    me = wallet(s.customer)
    assert (me["sandbox"], me["stripe"], me["balance"]) == (False, True, 0)  # no free credit

    direct = post(s.customer, "/api/wallet/deposit", {"amount": 2500, "method": "direct"})
    assert direct.status == 400 and "Checkout" in direct.json["error"], direct.raw
    assert not s.standin.requests

    started = post(s.customer, "/api/wallet/deposit", {"amount": 2500})

    assert started.status == 201, started.raw
    assert started.json["checkout_url"] == f"{s.standin.url}/pay/{started.json['session_id']}"
    [seen] = s.standin.requests
    assert (seen.method, seen.path) == ("POST", "/v1/checkout/sessions")
    assert seen.headers["Authorization"] == "Bearer sk_test_e2e_standin"
    assert seen.headers.get("Idempotency-Key")
    form = seen.form
    assert form["mode"] == "payment"
    assert form["metadata[account_id]"] == form["client_reference_id"] == me["account_id"]
    assert form["metadata[amount]"] == form["line_items[0][price_data][unit_amount]"] == "2500"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["success_url"].startswith(PUBLIC_URL + "/")
    assert form["cancel_url"].startswith(PUBLIC_URL + "/")
    assert wallet(s.customer)["balance"] == 0  # nothing until Stripe says it was paid

    payload = stripe_standin.checkout_completed("evt_e2e_1", started.json["session_id"],
                                                me["account_id"], 2500)
    now = int(time.time())
    forged = deliver(s, payload, stripe_standin.signature_header(payload, "whsec_wrong"))
    stale = deliver(s, payload, stripe_standin.signature_header(payload, SECRET, now - 400))
    tampered = deliver(s, payload.replace(b"2500", b"9999"),
                       stripe_standin.signature_header(payload, SECRET))
    unsigned = deliver(s, payload, None)
    for resp in (forged, stale, tampered, unsigned):
        assert resp.status == 400, resp.raw
    assert "tolerance" in stale.json["error"]
    assert wallet(s.customer)["balance"] == 0

    acks = [deliver(s, payload, stripe_standin.signature_header(payload, SECRET))
            for _ in range(3)]  # Stripe delivers at least once

    assert [(r.status, r.json["credited"]) for r in acks] == [
        (200, True), (200, False), (200, False)]
    assert wallet(s.customer)["balance"] == 2500
    history = s.customer.ok("GET", "/api/wallet/transactions")["transactions"]
    assert [(t["kind"], t["amount"], t["memo"]) for t in history] == [("deposit", 2500, "stripe")]

    def signed(body: bytes) -> Response:
        return deliver(s, body, stripe_standin.signature_header(body, SECRET))

    unknown = signed(stripe_standin.checkout_completed("evt_e2e_2", "cs_x", "a_nobody", 100))
    fractional = signed(stripe_standin.checkout_completed(
        "evt_e2e_3", "cs_x", me["account_id"], 100, metadata_amount="1.5"))
    assert (unknown.status, fractional.status) == (400, 400), (unknown.raw, fractional.raw)
    unpaid = signed(stripe_standin.checkout_completed(
        "evt_e2e_4", "cs_x", me["account_id"], 100, paid=False))
    other_type = signed(stripe_standin.checkout_completed(
        "evt_e2e_5", "cs_x", me["account_id"], 100, event_type="checkout.session.expired"))
    assert [(r.status, r.json["credited"]) for r in (unpaid, other_type)] == [
        (200, False), (200, False)]
    assert wallet(s.customer)["balance"] == 2500
    assert ledger(s.admin)["deposited"] == 2500


def test_stripe_mode_withdrawals_wait_for_an_admin(stripe_stack: StripeStack) -> None:
    s = stripe_stack
    me = wallet(s.worker)["account_id"]
    payload = stripe_standin.checkout_completed("evt_e2e_w", "cs_w", me, 1000)
    assert deliver(s, payload, stripe_standin.signature_header(payload, SECRET)).status == 200
    assert wallet(s.worker)["balance"] == 1000

    asked = post(s.worker, "/api/wallet/withdraw", {"amount": 600, "idempotency_key": "w-1"})

    assert asked.status == 202, asked.raw
    assert (asked.json["state"], asked.json["balance"], asked.json["pending_withdrawals"]) == (
        "pending", 400, 600)
    wid = asked.json["id"]
    again = post(s.worker, "/api/wallet/withdraw", {"amount": 600, "idempotency_key": "w-1"})
    assert again.status == 409, again.raw  # the same request, made once
    over = post(s.worker, "/api/wallet/withdraw", {"amount": 401})
    assert over.status == 402 and "holds 400" in over.json["error"], over.raw
    assert s.worker.call("GET", "/api/admin/withdrawals").status == 403
    listed = s.admin.ok("GET", "/api/admin/withdrawals")["withdrawals"]
    assert [(w["id"], w["account_id"], w["amount"], w["state"]) for w in listed] == [
        (wid, me, 600, "pending")]

    approved = post(s.admin, f"/api/admin/withdrawals/{wid}/approve")

    assert approved.status == 200 and approved.json["state"] == "approved", approved.raw
    assert post(s.admin, f"/api/admin/withdrawals/{wid}/approve").status == 404
    w = wallet(s.worker)
    assert (w["balance"], w["pending_withdrawals"]) == (400, 0)
    second = post(s.worker, "/api/wallet/withdraw", {"amount": 300}).json["id"]
    assert post(s.admin, f"/api/admin/withdrawals/{second}/reject").json["state"] == "rejected"
    w = wallet(s.worker)
    assert (w["balance"], w["pending_withdrawals"]) == (400, 0)
    assert s.admin.ok("GET", "/api/admin/withdrawals")["withdrawals"] == []
    kinds = [t["kind"] for t in s.worker.ok("GET", "/api/wallet/transactions")["transactions"]]
    assert kinds.count("withdrawal_hold") == 4  # two holds: each on the wallet and pending
    assert "withdrawal" in kinds and "withdrawal_rejected" in kinds
    assert ledger(s.admin)["withdrawn"] == 600


# ---- kill -9 in the middle of a paid run -------------------------------------------------


def test_kill9_mid_paid_run_pays_each_chunk_once(cluster: Cluster) -> None:
    coord = cluster.coordinator(MONEY_ENV)
    workers = [cluster.worker(coord, wid, slots=2, wait=False) for wid in ("k-w1", "k-w2")]
    for w in workers:
        w.wait_connected()
    api = coord.api()
    chunks = 30
    code = "import time\n\ndef process(item):\n    time.sleep(0.02)\n    return item\n"
    task_id = api.submit(code, list(range(chunks * 10)), {
        "chunk_size": 10, "price_per_chunk": PRICE, "budget": chunks * PRICE + 7})["id"]
    wait_until(lambda: api.task(task_id), 30, "some chunks paid while others run",
               ready=lambda i: i["chunks_done"] >= 6 and i["chunks_leased"] > 0,
               interval_s=0.02, watch=tuple(workers))

    coord.kill()
    coord.restart()

    live = []
    for w in workers:
        if w.alive:
            w.wait_connected(times=2)
            live.append(w)
        else:  # as a supervisor would
            live.append(cluster.worker(coord, w.worker_id, slots=2))
    info = api.wait_state(task_id, timeout_s=40, watch=tuple(live))
    assert info["state"] == "completed" and info["spent"] == chunks * PRICE, info
    assert wallet(api)["balance"] == INITIAL - chunks * PRICE
    for w in live:
        w.stop()
    coord.stop()

    db = sqlite3.connect(coord.data_dir / "coordinator.sqlite3")
    try:
        q = db.execute
        assert q("SELECT lease_id, COUNT(*) FROM transfers WHERE kind = 'payout'"
                 " GROUP BY lease_id HAVING COUNT(*) > 1").fetchall() == []
        assert q("SELECT chunk_index, COUNT(*) FROM transfers WHERE kind = 'payout'"
                 " GROUP BY task_id, chunk_index HAVING COUNT(*) > 1").fetchall() == []
        payouts = q("SELECT COUNT(*) FROM transfers WHERE kind = 'payout'").fetchone()[0]
        assert payouts == chunks == q("SELECT COUNT(*) FROM results").fetchone()[0]
        unbalanced = q("SELECT transfer_id FROM entries GROUP BY transfer_id"
                       " HAVING SUM(amount) != 0").fetchall()
        assert unbalanced == []
        balances = dict(q("SELECT account, balance FROM balances").fetchall())
        assert balances == dict(q("SELECT account, SUM(amount) FROM entries"
                                  " GROUP BY account").fetchall())
        deposited, withdrawn = q(
            "SELECT COALESCE(SUM(CASE WHEN amount < 0 THEN -amount END), 0),"
            " COALESCE(SUM(CASE WHEN amount > 0 THEN amount END), 0)"
            " FROM entries WHERE account = 'world'").fetchone()
        held = sum(b for a, b in balances.items() if a != "world")
        assert held == deposited - withdrawn
        assert all(b >= 0 for a, b in balances.items() if a != "world")
        assert balances["platform"] == chunks * FEE
        assert balances.get(f"escrow:{task_id}", 0) == 0
    finally:
        db.close()
