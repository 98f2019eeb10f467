"""The audit log end to end: rows for sign-ins (made and refused) and sign-outs, tokens,
money (deposits, withdrawals, Stripe, admin decisions), tasks, accounts made with
``tn-coordinator user``, and refusals (403); no secret anywhere in it; admins only; paging;
and floods of refusals throttled and the table trimmed.

The module's coordinator runs in sandbox mode with ``alice``, made (with a password and a
token) by ``tn-coordinator user add`` before it starts; ``acted`` then does everything once
and keeps every secret it saw, to look for them afterwards. Stripe and the flood limits get
coordinators of their own.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from coordinator.audit import TRIM_EVERY, AuditLog
from coordinator.config import Config
from coordinator.store.sqlite import SqliteStore
from tests.e2e import stripe_standin
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator
from tests.e2e.rest import Api, Response
from tests.security.token_steps import create_token, database_text, send, sign_in, tn, user_add

PASSWORD = "pw-" + secrets.token_hex(12)
WRONG_PASSWORD = "wrong-" + secrets.token_hex(12)
UNKNOWN_NAME = "nobody-" + secrets.token_hex(6)
CODE = "def process(item):\n    return item\n"
SANDBOX_ENV = {**FAST_ENV, "WALLET_SANDBOX_ENABLED": "true"}


@dataclass
class Acted:
    coord: Coordinator
    alice: Api
    admin: Api
    task_id: str
    secrets: list[str] = field(default_factory=list)  # tokens, passwords, session cookies
    csrf: str = ""  # stored (with its session), never audited


def audit(admin: Api, query: str = "") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = admin.ok("GET", "/api/admin/audit" + query)["entries"]
    return entries


@pytest.fixture(scope="module")
def acted(module_cluster: Cluster) -> Acted:
    coord = module_cluster.coordinator(SANDBOX_ENV, start=False)
    alice_token = user_add(coord, "alice", "customer", PASSWORD)
    coord.start()
    alice, admin = Api(coord.url, alice_token), coord.api(coord.admin_token)
    out = Acted(coord, alice, admin, "", [PASSWORD, WRONG_PASSWORD, alice_token,
                                          coord.customer_token, coord.admin_token])
    assert sign_in(coord.url, name="alice", password=WRONG_PASSWORD)[0].status == 401
    assert sign_in(coord.url, name=UNKNOWN_NAME, password=PASSWORD)[0].status == 401
    resp, browser = sign_in(coord.url, name="alice", password=PASSWORD)
    assert browser is not None, resp.raw
    out.secrets.append(browser.cookie.split("=", 1)[1])
    out.csrf = browser.csrf
    assert browser.call("POST", "/auth/signout").status == 200
    made = create_token(alice, "audited")
    out.secrets.append(made["token"])
    alice.ok("DELETE", f"/api/tokens/{made['id']}")
    assert send(alice, "POST", "/api/wallet/deposit", {"amount": 5000}).status == 201
    assert send(alice, "POST", "/api/wallet/withdraw", {"amount": 1000}).status == 201
    out.task_id = alice.submit(CODE, [1, 2, 3], {
        "budget": 1000, "price_per_chunk": 10, "requirements": ["pool=none"]})["id"]
    assert send(alice, "POST", f"/api/tasks/{out.task_id}/fund", {"amount": 500}).status == 200
    assert alice.call("POST", f"/api/tasks/{out.task_id}/cancel").status == 200
    return out


def test_actions_are_audited_after_they_happen(acted: Acted) -> None:
    rows = list(reversed(audit(acted.admin, "?limit=500")))
    mine = [(r["actor_name"], r["action"], r["outcome"], r["target"]) for r in rows
            if r["actor_name"] in ("alice", "console")]
    token_target = mine[1][3]
    assert mine == [
        ("console", "account.create", "ok", "account:alice"),
        ("console", "token.create", "ok", token_target),
        ("console", "account.password", "ok", "account:alice"),
        ("alice", "signin", "refused", ""),
        ("alice", "signin", "ok", ""),
        ("alice", "signout", "ok", ""),
        ("alice", "token.create", "ok", mine[7][3]),
        ("alice", "token.revoke", "ok", mine[7][3]),
        ("alice", "wallet.deposit", "ok", ""),
        ("alice", "wallet.withdraw", "ok", mine[9][3]),
        ("alice", "task.create", "ok", acted.task_id),
        ("alice", "task.fund", "ok", acted.task_id),
        ("alice", "task.cancel", "ok", acted.task_id),
    ], mine
    console = [r for r in rows if r["actor_name"] == "console"]
    assert console[0]["detail"]["role"] == "customer" and console[0]["actor_id"] is None
    assert all("os_user" in r["detail"] for r in console)  # who ran tn-coordinator user
    by_action = {r["action"]: r for r in rows if r["actor_name"] == "alice"}
    assert by_action["wallet.deposit"]["detail"] == {"amount": 5000, "method": "direct"}
    assert by_action["wallet.withdraw"]["detail"] == {"amount": 1000, "state": "done"}
    assert mine[9][3].startswith("withdrawal:")
    assert by_action["task.create"]["detail"] == {"budget": 1000, "price_per_chunk": 10}
    assert by_action["task.fund"]["detail"] == {"amount": 500}
    assert by_action["signout"]["ip"] == "127.0.0.1"
    assert by_action["token.create"]["detail"]["label"] == "audited"
    assert token_target.startswith("tk_") and mine[7][3].startswith("tk_")
    refused = [r for r in rows if r["action"] == "signin" and r["outcome"] == "refused"]
    assert [r["actor_name"] for r in refused] == ["alice", ""]  # the unknown name: not kept
    assert refused[0]["detail"]["error"] == "wrong username or password"
    assert all(r["at_ms"] <= int(time.time() * 1000) for r in rows)


def test_no_secret_is_ever_written(acted: Acted) -> None:
    table = database_text(acted.coord, "audit")
    assert "alice" in table  # the dump reads the rows
    for secret in [*acted.secrets, acted.csrf, UNKNOWN_NAME]:
        assert secret not in table, f"a secret in the audit table: {secret[:8]}..."
    raw = database_text(acted.coord)  # the database and its WAL, byte for byte
    assert len(acted.secrets) == 7
    for secret in acted.secrets:  # passwords, tokens and the session id: only hashes are kept
        assert secret not in raw, f"a secret in the database: {secret[:8]}..."
    entries = json.dumps(audit(acted.admin, "?limit=500"))
    for secret in [*acted.secrets, acted.csrf]:
        assert secret not in entries


def test_the_audit_log_is_for_admins_only(acted: Acted) -> None:
    coord = acted.coord
    for token in (coord.customer_token, coord.worker_token):
        resp = coord.api(token).call("GET", "/api/admin/audit")
        assert resp.status == 403 and "admin" in resp.json["error"], resp.raw
    assert Api(coord.url, None).call("GET", "/api/admin/audit").status == 401
    refused = audit(acted.admin, "?action=access.forbidden&actor=demo-worker")
    assert refused[0]["target"] == "GET /api/admin/audit" and refused[0]["outcome"] == "refused"
    cli = tn(coord, coord.customer_token, "audit")
    assert cli.returncode == 1 and "admin" in cli.stderr, cli


def test_a_refused_path_cannot_drive_the_admins_terminal(acted: Acted) -> None:
    """The audited target is the path a caller chose: its control characters are escaped,
    in the table and again by ``tn audit`` (a title-setting sequence here)."""
    coord = acted.coord
    resp = coord.api(coord.worker_token).call("POST", "/api/admin/withdrawals/%1b%5b2J/approve")
    assert resp.status == 403
    rows = audit(acted.admin, "?action=access.forbidden&actor=demo-worker")
    targets = [r["target"] for r in rows]
    assert any("\\x1b[2J" in t for t in targets), targets
    assert not any("\x1b" in t for t in targets), targets
    cli = tn(coord, coord.admin_token, "audit", "--action", "access.forbidden")
    assert cli.returncode == 0 and "\x1b" not in cli.stdout and "\\x1b[2J" in cli.stdout, cli


def test_paging_filters_and_bad_parameters(acted: Acted) -> None:
    coord, admin = acted.coord, acted.admin
    worker = coord.api(coord.worker_token)
    for i in range(7):
        create_token(worker, f"page-{i}")
    query = "?action=token.create&actor=demo-worker"
    everything = audit(admin, query + "&limit=500")
    assert [r["detail"]["label"] for r in everything] == [f"page-{i}" for i in range(6, -1, -1)]
    seen: list[int] = []
    cursor = ""
    while True:
        page = admin.ok("GET", f"/api/admin/audit{query}&limit=3{cursor}")
        seen += [r["id"] for r in page["entries"]]
        if page["next_before_id"] is None:
            break
        assert len(page["entries"]) == 3
        cursor = f"&before_id={page['next_before_id']}"
    assert seen == [r["id"] for r in everything] and seen == sorted(seen, reverse=True)
    future = int(time.time() * 1000) + 3_600_000
    assert audit(admin, f"{query}&since_ms={future}") == []
    assert len(audit(admin, f"{query}&since_ms={everything[-1]['at_ms']}")) == 7
    for bad in ("limit=0", "limit=501", "before_id=abc", "since_ms=-1", "limit=%C2%B2",
                "action=" + "x" * 201):
        resp = admin.call("GET", f"/api/admin/audit?{bad}")
        assert resp.status == 400 and resp.json["field"] == bad.split("=")[0], (bad, resp.raw)

    first = tn(coord, coord.admin_token, "audit", "--action", "token.create", "--actor",
               "demo-worker", "--limit", "3")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "WHEN", "ACTOR", "ACTION"] and len(lines) == 4
    assert 'label="page-6"' in lines[1]
    more = first.stderr.strip()
    assert more.startswith("more: --before-id ")
    second = tn(coord, coord.admin_token, "audit", "--action", "token.create", "--actor",
                "demo-worker", "--limit", "3", "--before-id", more.split()[-1], "--since", "1h")
    assert 'label="page-3"' in second.stdout.splitlines()[1], second


def test_stripe_and_withdrawal_decisions_are_audited(cluster: Cluster) -> None:
    secret = "whsec_audit_" + secrets.token_hex(8)
    standin = stripe_standin.start()
    try:
        coord = cluster.coordinator({
            **FAST_ENV, "WALLET_SANDBOX_ENABLED": "false", "STRIPE_SECRET_KEY": "sk_test_audit",
            "STRIPE_WEBHOOK_SECRET": secret, "STRIPE_API_BASE": standin.url})
        me, admin = coord.api(), coord.api(coord.admin_token)
        account_id = me.ok("GET", "/api/wallet")["account_id"]
        started = send(me, "POST", "/api/wallet/deposit", {"amount": 2500})
        assert started.status == 201, started.raw
        payload = stripe_standin.checkout_completed("evt_audit_1", started.json["session_id"],
                                                    account_id, 2500)
        forged = _deliver(coord, payload, stripe_standin.signature_header(payload, "whsec_x"))
        assert forged.status == 400, forged.raw
        for _ in range(2):  # delivered twice, credited (and audited) once
            acked = _deliver(coord, payload, stripe_standin.signature_header(payload, secret))
            assert acked.status == 200, acked.raw
        asked = send(me, "POST", "/api/wallet/withdraw", {"amount": 600})
        assert asked.status == 202, asked.raw
        assert send(admin, "POST", f"/api/admin/withdrawals/{asked.json['id']}/approve"
                    ).status == 200
        second = send(me, "POST", "/api/wallet/withdraw", {"amount": 300}).json["id"]
        assert send(admin, "POST", f"/api/admin/withdrawals/{second}/reject").status == 200
    finally:
        standin.close()

    rows = list(reversed(audit(admin, "?limit=500")))
    got = [(r["actor_name"], r["action"], r["target"], r["detail"]) for r in rows]
    assert got == [
        ("demo-customer", "wallet.checkout", f"checkout:{started.json['session_id']}",
         {"amount": 2500}),
        ("", "wallet.credit", "", {"error": forged.json["error"]}),
        ("stripe", "wallet.credit", "account:demo-customer",
         {"amount": 2500, "event": "evt_audit_1"}),
        ("demo-customer", "wallet.withdraw", f"withdrawal:{asked.json['id']}",
         {"amount": 600, "state": "pending"}),
        ("demo-admin", "withdrawal.approve", f"withdrawal:{asked.json['id']}",
         {"amount": 600, "account": "demo-customer"}),
        ("demo-customer", "wallet.withdraw", f"withdrawal:{second}",
         {"amount": 300, "state": "pending"}),
        ("demo-admin", "withdrawal.reject", f"withdrawal:{second}",
         {"amount": 300, "account": "demo-customer"}),
    ], got
    assert secret not in database_text(coord, "audit")


def _deliver(coord: Coordinator, payload: bytes, signature: str) -> Response:
    req = urllib.request.Request(coord.url + "/api/stripe/webhook", data=payload, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Stripe-Signature": signature})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, err.read())


def test_refusal_floods_are_throttled_and_the_table_trimmed(cluster: Cluster) -> None:
    coord = cluster.coordinator({**FAST_ENV, "TN_AUDIT_REFUSALS_PER_MINUTE_MAX": "3",
                                 "TN_AUDIT_ROWS_MAX": "40", "TN_TOKENS_PER_ACCOUNT_MAX": "1000"})
    me, admin = coord.api(), coord.api(coord.admin_token)
    for _ in range(8):
        assert sign_in(coord.url, name="demo-customer", password=WRONG_PASSWORD)[0].status == 401
    for _ in range(10):
        assert me.call("GET", "/api/admin/audit").status == 403
    assert len(audit(admin, "?action=signin")) == 3
    assert len(audit(admin, "?action=access.forbidden")) == 3

    for i in range(TRIM_EVERY + 10):
        create_token(me, f"flood-{i}")
    rows = audit(admin, "?limit=500")
    written = 3 + 3 + TRIM_EVERY + 10
    assert len(rows) <= 40 + TRIM_EVERY and len(rows) < written, len(rows)
    assert rows[0]["detail"]["label"] == f"flood-{TRIM_EVERY + 9}"  # the newest are kept
    assert all(r["action"] == "token.create" for r in rows)  # the oldest (refusals) are gone


async def test_suppressed_refusals_are_counted_into_the_next_row(tmp_path: Path) -> None:
    """The throttle alone, on a real store, with the clock driven by hand."""
    store = await SqliteStore.open(tmp_path / "db.sqlite3")
    try:
        now = [1000.0]
        log = AuditLog(store, Config(audit_refusals_per_minute_max=2), clock=lambda: now[0])
        await log.ensure_tables()
        for _ in range(5):
            await log.record("signin", None, ok=False, detail={"method": "password"})
        now[0] += 61
        await log.record("signin", None, ok=False, detail={"method": "password"})
        rows = await log.page()
        assert [r.detail.get("suppressed") for r in rows] == [3, None, None]
        with pytest.raises(AssertionError, match="a secret"):
            await log.record("token.create", None, detail={"token": "tn_x"})
    finally:
        await store.close()
