"""The authorization matrix, as an attacker would check it: every route of the running app
against every kind of caller, and the worker and live sockets against tenants that are not
theirs.

``ROUTE_TABLE`` says, for each (method, path), who may call it and whether it names another
tenant's object. Routes are enumerated from the app itself (its Starlette routes), from the
running coordinator's ``/openapi.json`` and from the route tables of http_api.py,
http_wallet.py and dashboard.py: a route that exists and is not in the table fails the test,
so a new route must be classified here before it ships. Routes that are being added (tokens,
the audit log) are classified already and checked only where they exist.

Expected answers: 401 for no token or an unknown one, 403 for a role that may not call the
route at all, 404 for another tenant's object (the same answer as for an object that does not
exist: no existence oracle). Every refusal is a JSON ``{"error": ...}`` body, and nothing
anyone but A (and the admin) receives contains A's task name, code, data, outputs, account id,
balance or tokens.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from coordinator.dashboard import DASHBOARD_ROUTES, load_static
from coordinator.http_api import ROUTES
from coordinator.http_wallet import WALLET_ROUTES
from schema import worker as w
from tests.e2e.harness import Cluster
from tests.e2e.rest import Api, Response, multipart
from tests.e2e.waiting import wait_until
from tests.e2e.wire import output, session
from tests.security.tenants import (
    PLAIN_CODE,
    ROLES,
    SPARE_LABELS,
    Tenants,
    app_routes,
    error_body_problem,
    leaks,
    norm,
    setup_tenants,
)

CLOSE_POLICY = 1008


# ---- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Who may call a route. ``who``: ``public`` (anyone, no token needed), ``signed-in``
    (any account), ``customer`` (customers and admins) or ``admin``. ``tenant``: the path
    names A's object, so any other account (B, a worker without a lease) gets 404; an admin
    acts on it too unless ``admin`` says otherwise. ``ok``: what a permitted caller gets.
    ``mutates``: permitted callers act on a scratch object of A, never on T1."""

    who: str
    tenant: bool = False
    ok: frozenset[int] = frozenset({200})
    admin: frozenset[int] | None = None  # the admin's answer when it differs from ``ok``
    body: str | None = None  # a key of BODIES
    query: str = ""
    mutates: bool = False


def _ok(*codes: int) -> frozenset[int]:
    return frozenset(codes)


TOKEN_OBJECT = Rule("signed-in", tenant=True, ok=_ok(200, 204),
                    admin=_ok(200, 204, 404), mutates=True)  # own tokens only

ROUTE_TABLE: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule("public"),
    ("GET", "/openapi.json"): Rule("public"),
    # tasks: a customer's own; an admin's view covers every task
    ("POST", "/api/tasks"): Rule("customer", ok=_ok(201), body="task"),  # the caller's own
    ("GET", "/api/tasks"): Rule("customer"),  # the caller's own tasks only
    ("GET", "/api/tasks/{}"): Rule("customer", tenant=True),
    ("GET", "/api/tasks/{}/chunks"): Rule("customer", tenant=True),
    ("GET", "/api/tasks/{}/chunks/{}"): Rule("customer", tenant=True),
    ("GET", "/api/tasks/{}/results"): Rule("customer", tenant=True, query="?partial=true"),
    ("GET", "/api/tasks/{}/chunk-states"): Rule("customer", tenant=True),
    ("POST", "/api/tasks/{}/cancel"): Rule("customer", tenant=True, mutates=True),
    ("POST", "/api/tasks/{}/pause"): Rule("customer", tenant=True, mutates=True),
    ("POST", "/api/tasks/{}/resume"): Rule("customer", tenant=True, mutates=True),
    ("PATCH", "/api/tasks/{}"): Rule("customer", tenant=True, mutates=True, body="patch"),
    # funding moves the caller's own money: the owner only, an admin gets 404 as well
    ("POST", "/api/tasks/{}/fund"): Rule("customer", tenant=True, admin=_ok(404),
                                         mutates=True, body="amount"),
    # workers may fetch the code of a task they hold a live lease on (test_ws_* below)
    ("GET", "/api/tasks/{}/code"): Rule("signed-in", tenant=True),
    # money: every account has its own wallet
    ("GET", "/api/wallet"): Rule("signed-in"),
    ("POST", "/api/wallet/deposit"): Rule("signed-in", ok=_ok(201), body="amount"),
    ("POST", "/api/wallet/withdraw"): Rule("signed-in", ok=_ok(201), body="amount"),
    ("GET", "/api/wallet/transactions"): Rule("signed-in"),
    ("GET", "/api/wallet/earnings"): Rule("signed-in"),
    ("GET", "/api/admin/withdrawals"): Rule("admin"),
    # sandbox mode: withdrawals are direct, none is ever pending, so even the admin gets 404
    ("POST", "/api/admin/withdrawals/{}/approve"): Rule("admin", ok=_ok(404)),
    ("POST", "/api/admin/withdrawals/{}/reject"): Rule("admin", ok=_ok(404)),
    ("GET", "/api/admin/ledger"): Rule("admin"),
    ("GET", "/api/admin/audit"): Rule("admin"),
    # Stripe signs its calls; unconfigured here, so 404 for everyone
    ("POST", "/api/stripe/webhook"): Rule("public", ok=_ok(404), body="empty"),
    # the dashboard's sign-in: public (the session is the cookie, never a bearer token)
    ("GET", "/auth/session"): Rule("public"),
    ("POST", "/auth/signin"): Rule("public", ok=_ok(400), body="empty"),  # no credentials
    ("POST", "/auth/signout"): Rule("public"),
    # API tokens: any account manages its own (being added; checked where they exist)
    ("GET", "/api/tokens"): Rule("signed-in"),
    ("POST", "/api/tokens"): Rule("signed-in", ok=_ok(200, 201), body="token"),
}
# any method on /api/tokens/{id} (and below it) acts on one token: its owner's only
TOKEN_PREFIX = "/api/tokens/{}"
STATIC = Rule("public")  # the dashboard's files (coordinator.dashboard.load_static)
WS_TABLE = {
    "/ws/worker": "worker and admin tokens may hello; a lease belongs to its session",
    "/ws/live": "any account; task:/grid: topics of its own tasks, platform for admins",
}

BODIES: dict[str, tuple[bytes, str]] = {
    "amount": (b'{"amount": 1}', "application/json"),
    "patch": (b'{"priority": 6}', "application/json"),
    "empty": (b"{}", "application/json"),
    "token": (b'{"label": "matrix"}', "application/json"),
    "task": multipart([
        ("code", "main.py", PLAIN_CODE.encode()), ("data", "data.json", b"[1]"),
        ("spec", None, b'{"requirements": ["pool=nobody"], "name": "matrix"}')]),
}


def rule_of(method: str, path: str) -> Rule | None:
    key = (method, norm(path))
    if key in ROUTE_TABLE:
        return ROUTE_TABLE[key]
    if norm(path).startswith(TOKEN_PREFIX):
        return TOKEN_OBJECT
    if method == "GET" and path in load_static():
        return STATIC
    return None


def expected(rule: Rule, caller: str) -> frozenset[int]:
    if rule.who == "public":
        return rule.ok
    if caller in ("anon", "bad"):
        return _ok(401)
    role = ROLES[caller]
    if (rule.who == "admin" and role != "admin") or (
            rule.who == "customer" and role not in ("customer", "admin")):
        return _ok(403)
    if caller == "admin" and rule.admin is not None:
        return rule.admin
    if rule.tenant and caller not in ("alice", "admin"):
        return _ok(404)
    return rule.ok


# ---- the routes that exist -------------------------------------------------------------


def openapi_routes(api: Api) -> set[tuple[str, str]]:
    doc = api.ok("GET", "/openapi.json")
    return {(method.upper(), norm(path)) for path, ops in doc["paths"].items() for method in ops
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE")}


def table_routes() -> set[tuple[str, str]]:
    return {(m, norm(p)) for p, m, _ in [*ROUTES, *WALLET_ROUTES, *DASHBOARD_ROUTES]}


# ---- the module's coordinator ----------------------------------------------------------


@pytest.fixture(scope="module")
def t(module_cluster: Cluster) -> Iterator[Tenants]:
    yield setup_tenants(module_cluster)


def token_ids(t: Tenants) -> dict[str, str]:
    """A's spare tokens' ids, as ``GET /api/tokens`` lists them (by their labels)."""
    doc = t.api("alice").ok("GET", "/api/tokens")
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            label = node.get("label")
            if label in SPARE_LABELS:
                for key in ("id", "token_id", "prefix"):
                    if isinstance(node.get(key), str | int):
                        found[label] = str(node[key])
                        break
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert set(found) == set(SPARE_LABELS), (
        f"cannot find the ids of A's tokens {SPARE_LABELS} in GET /api/tokens: {doc!r}; "
        "teach token_ids() the listing's shape")
    return found


def t1_view(t: Tenants) -> dict[str, Any]:
    """What must not change about T1 when others poke at it (the last minute's pace moves
    by itself)."""
    info = t.api("alice").task(t.task_id)
    for volatile in ("burn_per_minute", "chunks_per_minute", "eta_ms"):
        info.pop(volatile, None)
    return {"info": info, "chunks": t.api("alice").chunks(t.task_id),
            "results": t.api("alice").results(t.task_id, partial=True)}


def fill(template: str, caller: str, rule: Rule, t: Tenants,
         token_id: dict[str, str] | None) -> str:
    """The route's path for this caller: A's T1 (or, for a permitted caller of a route that
    changes things, a scratch task of A), chunk 0, withdrawal 1, A's spare token."""
    permitted = 200 <= min(expected(rule, caller)) < 300 or caller in ("alice", "admin")

    def value(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        if template.startswith("/api/tasks/") and name == "task_id":
            return t.scratch_task() if rule.mutates and permitted else t.task_id
        if name == "index":
            return "0"
        if name == "withdrawal_id":
            return "1"
        if template.startswith("/api/tokens/"):
            assert token_id is not None
            label = {"alice": "spare-alice", "admin": "spare-admin"}.get(caller, "spare-refused")
            return token_id[label]
        raise AssertionError(f"the matrix cannot fill {{{name}}} of {template}: teach fill()")

    return re.sub(r"\{([^}]*)\}", value, template)


def call(t: Tenants, caller: str, method: str, path: str, rule: Rule) -> Response:
    body, ctype = BODIES[rule.body] if rule.body else (None, None)
    return t.api(caller).call(method, path + rule.query, body, ctype)


# ---- REST ------------------------------------------------------------------------------


def test_every_route_is_classified(t: Tenants) -> None:
    app = app_routes()
    documented = openapi_routes(t.api("anon"))
    present = set(app) | documented | table_routes()
    unclassified = sorted(
        (m, p) for m, p in present
        if (m != "WS" and rule_of(m, app.get((m, p), p)) is None)
        or (m == "WS" and p not in WS_TABLE))
    assert not unclassified, (
        f"routes nobody classified: {unclassified}; add each to ROUTE_TABLE (who may call "
        "it, is it tenant-scoped) in tests/security/test_authz_matrix.py")
    assert documented <= set(app), f"documented but not served: {documented - set(app)}"
    assert table_routes() <= set(app), f"in a route table, not served: {table_routes() - set(app)}"


def test_rest_matrix(t: Tenants) -> None:
    routes = {k: v for k, v in app_routes().items() if k[0] != "WS"}
    token_id = token_ids(t) if ("GET", "/api/tokens") in routes else None
    before = t1_view(t)
    failures: list[str] = []
    cells = 0
    for (method, _), template in sorted(routes.items()):
        rule = rule_of(method, template)
        assert rule is not None, (method, template)  # test_every_route_is_classified
        secrets = t.secrets()
        for caller in ("anon", "bad", "bob", "worker", "admin", "alice"):
            path = fill(template, caller, rule, t, token_id)
            resp = call(t, caller, method, path, rule)
            cells += 1
            want = expected(rule, caller)
            where = f"{caller} {method} {path}{rule.query}"
            if resp.status not in want:
                failures.append(f"{where}: {resp.status}, expected {sorted(want)}: "
                                f"{resp.raw[:200]!r}")
            if resp.status >= 400 and (problem := error_body_problem(resp)):
                failures.append(f"{where}: {resp.status} {problem}")
            if caller not in ("alice", "admin") and (found := leaks(resp.raw, secrets)):
                failures.append(f"{where}: {resp.status} leaks {found}: {resp.raw[:300]!r}")
    assert cells >= 6 * 40, cells
    assert not failures, f"{len(failures)} of {cells} cells wrong:\n" + "\n".join(failures)
    assert t1_view(t) == before, "T1 changed while other callers poked at it"
    if token_id is not None:  # the refused callers could not revoke A's token
        assert Api(t.coord.url, t.spare_tokens["spare-refused"]).call(
            "GET", "/api/wallet").status == 200
    ledger = t.api("admin").ok("GET", "/api/admin/ledger")
    held = ledger["wallets"] + ledger["escrow"] + ledger["pending"] + ledger["platform"]
    assert held == ledger["deposited"] - ledger["withdrawn"], ledger


def test_lists_and_wallets_show_only_the_callers_own(t: Tenants) -> None:
    bob = t.api("bob")
    assert [x["owner"] for x in bob.tasks()] and {x["owner"] for x in bob.tasks()} == {
        t.ids["bob"]}
    for caller in ("bob", "worker"):
        doc = t.api(caller).ok("GET", "/api/wallet")
        assert doc["account_id"] == t.ids[caller], doc
    admin_ids = {x["id"] for x in t.api("admin").tasks()}
    assert {t.task_id, t.bob_task_id} <= admin_ids


def test_hostile_task_ids_get_the_same_404_as_other_tenants(t: Tenants) -> None:
    """Ids that do not exist, path tricks and A's id with B's token: all the same 404, word
    for word but for the id echoed back (no oracle for which task ids exist)."""
    bob = t.api("bob")
    missing = "t_0000000000000000"
    ids = [t.task_id, missing, "..%2F..%2Fetc%2Fpasswd", "%00", "t_" + "f" * 300,
           t.task_id.upper(), t.task_id + "%20", "%2e%2e"]
    for suffix in ("", "/chunks", "/results", "/chunks/0", "/chunk-states", "/code"):
        answers = {}
        for task_id in ids:
            resp = bob.call("GET", f"/api/tasks/{task_id}{suffix}")
            assert resp.status == 404, (task_id, suffix, resp.status, resp.raw[:200])
            assert error_body_problem(resp) is None, resp.raw
            assert not leaks(resp.raw, t.secrets()), resp.raw
            answers[task_id] = resp.raw.replace(task_id.encode(), b"<id>")
        assert answers[t.task_id] == answers[missing], (suffix, answers)
    for suffix in ("/cancel", "/pause", "/resume", "/fund"):
        got = [bob.call("POST", f"/api/tasks/{tid}{suffix}", b'{"amount": 1}',
                        "application/json") for tid in (t.task_id, missing)]
        assert [r.status for r in got] == [404, 404], (suffix, got)
        assert got[0].raw.replace(t.task_id.encode(), b"<id>") == got[1].raw.replace(
            missing.encode(), b"<id>"), (suffix, got)


# ---- the worker socket -----------------------------------------------------------------


async def _refused_hello(t: Tenants, token: str) -> tuple[int | None, list[Any]]:
    async with session(t.coord) as peer:
        await peer.send(w.Hello("intruder", token))
        return await peer.until_closed()


def test_ws_hello_needs_a_worker_or_admin_token(t: Tenants) -> None:
    secrets = t.secrets()
    for token in (t.tokens["alice"], t.tokens["bob"], "tn_bogus", t.spare_tokens["spare-alice"]):
        code, got = asyncio.run(_refused_hello(t, token))
        assert code == CLOSE_POLICY, (code, got)
        assert len(got) == 1 and isinstance(got[0], w.Error) and got[0].fatal, got
        assert not leaks(got[0].reason, secrets), got

    async def admin_hello() -> None:
        async with session(t.coord, "admin-as-worker", token=t.tokens["admin"]) as peer:
            assert peer.welcome is not None

    asyncio.run(admin_hello())


def _money(t: Tenants, task_id: str) -> dict[str, Any]:
    """Everything money about a task and its players, to compare before and after."""
    info = t.api("alice").task(task_id)
    return {
        "wallets": {c: t.api(c).ok("GET", "/api/wallet")["balance"]
                    for c in ("alice", "worker", "worker2")},
        "earnings": {c: t.api(c).ok("GET", "/api/wallet/earnings")["total"]
                     for c in ("worker", "worker2")},
        "ledger": t.api("admin").ok("GET", "/api/admin/ledger"),
        "task": (info["spent"], info["chunks_done"], info["budget"]),
    }


async def _live_frames(t: Tenants, caller: str, topics: list[str], wanted: int,
                       timeout_s: float = 5.0) -> list[dict[str, Any]]:
    async with live(t, caller) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": topics}))
        return [json.loads(await _recv(ws, timeout_s)) for _ in range(wanted)]


async def _recv(ws: ClientConnection, timeout_s: float = 5.0) -> str:
    async with asyncio.timeout(timeout_s):
        frame = await ws.recv()
    assert isinstance(frame, str), frame
    return frame


async def _fencing(t: Tenants, task_id: str) -> None:
    alice = t.api("alice")
    async with session(t.coord, "fence-holder", token=t.tokens["worker"],
                       capabilities=["pool=fence"], slots=1) as holder:
        assign = await holder.expect(w.Assign)
        lease = assign.lease_id
        assert assign.task_id == task_id
        # holding a lease on T2 opens T2's code to W's account, and nothing else
        assert t.api("worker").call("GET", f"/api/tasks/{task_id}/code").status == 200
        for caller, tid in (("worker2", task_id), ("worker", t.task_id), ("bob", task_id)):
            resp = t.api(caller).call("GET", f"/api/tasks/{tid}/code")
            assert resp.status == 404 and error_body_problem(resp) is None, (caller, resp)
        before = _money(t, task_id)
        chunk_before = alice.chunks(task_id)
        # another account cannot claim the lease at hello, even under the same worker id
        async with session(t.coord, "fence-holder", token=t.tokens["worker2"],
                           capabilities=["pool=other"], held_leases=[lease]) as claimer:
            assert claimer.welcome is not None
            assert (claimer.welcome.resumed, claimer.welcome.dropped) == ([], [lease])
        forged = [lease + 1, lease + 1_000_000, 0, 2**63 - 1, 2**64 - 1]
        async with session(t.coord, "fence-thief", token=t.tokens["worker2"],
                           capabilities=["pool=other"]) as other_account, \
                session(t.coord, "fence-twin", token=t.tokens["worker"],
                        capabilities=["pool=other"]) as same_account:
            for thief in (other_account, same_account):
                for lid in [lease, *forged]:
                    await thief.send(w.Progress(lid, 5, 9, "stolen progress"))
                    await thief.send(w.Result(lid, output(["stolen", "stolen"])))
                    rejected = await thief.expect(w.Rejected)
                    assert rejected.lease_id == lid, rejected
                    await thief.send(w.Fail(lid, "zombie says it failed", retryable=False))
                    assert (await thief.expect(w.Rejected)).lease_id == lid
                    await thief.send(w.Heartbeat(leases=[lid]))
            # the chunk, its progress and the money are as they were
            assert alice.chunks(task_id) == chunk_before
            assert _money(t, task_id) == before
            [detail, *_] = await _live_frames(t, "alice", [f"grid:{task_id}"], 1)
            assert detail["type"] == "task_detail", detail
            assert [(a["lease_id"], a["worker_id"], a["done"], a["total"])
                    for a in detail["assignments"]] == [(lease, "fence-holder", 0, 0)]
        await holder.send(w.Result(lease, output(["ok", "ok"])))
        assert (await holder.expect(w.Accepted)).lease_id == lease
    after = _money(t, task_id)
    assert after["wallets"]["worker2"] == before["wallets"]["worker2"]
    assert after["wallets"]["worker"] > before["wallets"]["worker"]
    assert alice.results(task_id) == ["ok", "ok"]
    # the lease ended: W's account may no longer read the code
    assert t.api("worker").call("GET", f"/api/tasks/{task_id}/code").status == 404


def test_ws_a_lease_is_its_sessions_alone(t: Tenants) -> None:
    """Other sessions (of another account, or of the same account) cannot progress, finish,
    fail or heartbeat a lease they do not hold, nor can forged ids; the code of a task is
    open to a worker only while it holds a lease on it."""
    alice = t.api("alice")
    task_id = alice.submit(PLAIN_CODE, ["a", "b"], {
        "chunk_size": 2, "requirements": ["pool=fence"], "price_per_chunk": 100,
        "budget": 500, "name": "fence"})["id"]
    asyncio.run(_fencing(t, task_id))


async def _stale(t: Tenants, task_id: str) -> None:
    alice = t.api("alice")
    hello: dict[str, Any] = {"token": t.tokens["worker"], "capabilities": ["pool=stale"],
                             "slots": 1}
    async with session(t.coord, "stale-w", **hello) as first:
        old = (await first.expect(w.Assign)).lease_id
    # gone longer than the disconnect grace: the lease expires, the chunk is pending again
    await asyncio.to_thread(
        wait_until, lambda: alice.chunks(task_id)[0], 10, "the stale lease to expire",
        ready=lambda c: c["state"] == "pending")
    before = _money(t, task_id)
    async with session(t.coord, "stale-w", held_leases=[old], **hello) as again:
        assert again.welcome is not None and again.welcome.dropped == [old], again.welcome
        new = (await again.expect(w.Assign)).lease_id
        assert new != old
        await again.send(w.Result(old, output(["stale", "stale"])))
        assert (await again.expect(w.Rejected)).lease_id == old
        await again.send(w.Fail(old, "stale failure"))
        assert (await again.expect(w.Rejected)).lease_id == old
        chunk = alice.chunks(task_id)[0]
        assert (chunk["state"], chunk["lease_id"]) == ("leased", new), chunk
        assert _money(t, task_id) == before
        await again.send(w.Result(new, output(["fresh", "fresh"])))
        assert (await again.expect(w.Accepted)).lease_id == new
        await again.send(w.Result(old, output(["stale", "stale"])))  # still not accepted
        assert (await again.expect(w.Rejected)).lease_id == old
    assert alice.results(task_id) == ["fresh", "fresh"]


def test_ws_a_stale_lease_after_reconnect_is_rejected(t: Tenants) -> None:
    alice = t.api("alice")
    task_id = alice.submit(PLAIN_CODE, ["x", "y"], {
        "chunk_size": 2, "requirements": ["pool=stale"], "price_per_chunk": 100,
        "budget": 500, "name": "stale"})["id"]
    asyncio.run(_stale(t, task_id))


# ---- the live socket -------------------------------------------------------------------


def live(t: Tenants, caller: str) -> Any:
    token = {"bad": "tn_bogus"}.get(caller) or t.tokens.get(caller)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(t.coord.ws_url + "/ws/live", additional_headers=headers,
                   compression=None)


async def _frames_until(ws: ClientConnection, barrier: str,
                        timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Frames received up to and including the first of type ``barrier``."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["type"] != barrier:
        got.append(json.loads(await _recv(ws, timeout_s)))
    return got


def test_live_needs_a_token(t: Tenants) -> None:
    async def refused(caller: str) -> int:
        try:
            async with live(t, caller):
                pass
        except InvalidStatus as exc:
            assert not leaks(bytes(exc.response.body or b""), t.secrets())
            return exc.response.status_code
        raise AssertionError(f"{caller} was let onto the live socket")

    for caller in ("anon", "bad"):
        assert asyncio.run(refused(caller)) == 403


async def _live_refusals(t: Tenants) -> None:
    alice_id, t1 = t.ids["alice"], t.task_id
    theirs = [f"task:{t1}", f"grid:{t1}", f"tasks:{alice_id}", "tasks:*", f"wallet:{alice_id}",
              f"workers:{alice_id}", "platform", f"task:{t1}x", "task:t_0000000000000000",
              "grid:", "task:", f"grid:{t1}/../{t.bob_task_id}", "wallet:*"]
    secrets = t.secrets()
    for caller in ("bob", "worker"):
        async with live(t, caller) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topics": theirs}))
            errors = [json.loads(await _recv(ws)) for _ in theirs]
            assert [e["type"] for e in errors] == ["error"] * len(theirs), errors
            assert [e["topic"] for e in errors] == theirs, errors
            # no oracle: A's task and a task that does not exist are refused alike
            assert errors[0]["reason"] == errors[8]["reason"] == errors[1]["reason"], errors
            await ws.send(json.dumps({"type": "subscribe", "topics": ["wallet"]}))
            mine = await _frames_until(ws, "wallet")
            for frame in [*errors, *mine]:  # (an error's topic is B's own words, echoed)
                assert not leaks(json.dumps({**frame, "topic": None}), secrets), frame
            own = t.api(caller).ok("GET", "/api/wallet")["balance"]
            assert mine[-1]["balance"] == own, mine


def test_live_other_tenants_topics_are_refused(t: Tenants) -> None:
    asyncio.run(_live_refusals(t))


async def _no_updates_of_others(t: Tenants) -> None:
    secrets = t.secrets()
    async with live(t, "bob") as bob, live(t, "alice") as alice:
        await bob.send(json.dumps({"type": "subscribe", "topics": ["tasks"]}))
        first = await _frames_until(bob, "task")  # B's own task
        await alice.send(json.dumps({"type": "subscribe", "topics": ["tasks"]}))
        await _frames_until(alice, "task")
        scratch = await asyncio.to_thread(t.scratch_task)
        await asyncio.to_thread(t.api("alice").call, "PATCH", f"/api/tasks/{scratch}",
                                b'{"priority": 9}', "application/json")
        seen: list[dict[str, Any]] = []
        while not any(f["type"] == "task" and f["task"]["id"] == scratch
                      and f["task"]["priority"] == 9 for f in seen):
            seen.append(json.loads(await _recv(alice)))
        # whatever that flush gave B is queued before a fresh snapshot of B's wallet
        await bob.send(json.dumps({"type": "subscribe", "topics": ["wallet"]}))
        later = await _frames_until(bob, "wallet")
        for frame in [*first, *later]:
            assert not leaks(json.dumps(frame), secrets), frame
            if frame["type"] == "task":
                assert frame["task"]["owner"] == t.ids["bob"], frame


def test_live_task_updates_go_to_their_owner_only(t: Tenants) -> None:
    asyncio.run(_no_updates_of_others(t))


async def _permitted(t: Tenants) -> None:
    async with live(t, "admin") as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": ["platform",
                                                                  f"task:{t.task_id}"]}))
        got = [json.loads(await _recv(ws)) for _ in range(2)]
        assert sorted(f["type"] for f in got) == ["platform", "task"], got
    async with live(t, "alice") as ws:
        await ws.send(json.dumps({"type": "subscribe", "topics": [f"grid:{t.task_id}"]}))
        got = await _frames_until(ws, "chunks")
        assert got[0]["type"] == "task_detail" and got[0]["task_id"] == t.task_id, got


def test_live_owners_and_admins_may_watch(t: Tenants) -> None:
    """The refusals above are not blanket: A watches T1, the admin the platform."""
    asyncio.run(_permitted(t))

