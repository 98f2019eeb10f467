"""API tokens end to end: created through the API (shown once), listed without secrets,
expiring and revoked with immediate effect, invisible to other tenants, managed by admins for
anyone, refused with clear 400s for bad bodies; and ``tn token ...`` as a subprocess.

One coordinator serves most of the module (each test looks only at tokens it made); the
limits test starts its own with small limits.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from coordinator.http_tokens import TOKEN_ROUTES
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator
from tests.e2e.rest import Api
from tests.e2e.waiting import wait_until
from tests.security.token_steps import create_token, my_tokens, send, sign_in, tn

LISTED_KEYS = {"id", "label", "account", "state", "created_ms", "expires_ms", "revoked_ms"}
TOKEN_ID = re.compile(r"tk_[0-9a-f]{12}")


@pytest.fixture(scope="module")
def coord(module_cluster: Cluster) -> Coordinator:
    return module_cluster.coordinator(FAST_ENV)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_create_shows_the_token_once_and_list_never(coord: Coordinator) -> None:
    me = coord.api()
    made = create_token(me, "laptop", expires_in_s=3600)

    assert TOKEN_ID.fullmatch(made["id"]) and made["id"] == "tk_" + digest(made["token"])[:12]
    assert made["token"].startswith("tn_") and made["label"] == "laptop"
    assert made["account"] == "demo-customer"
    assert made["expires_ms"] == made["created_ms"] + 3_600_000
    assert Api(coord.url, made["token"]).ok("GET", "/api/wallet")["account_id"] == \
        me.ok("GET", "/api/wallet")["account_id"]  # the new token works, as the same account
    resp = me.call("GET", "/api/tokens")
    assert resp.status == 200
    listed = [t for t in resp.json["tokens"] if t["id"] == made["id"]]
    assert listed == [{"id": made["id"], "label": "laptop", "account": "demo-customer",
                       "state": "active", "created_ms": made["created_ms"],
                       "expires_ms": made["expires_ms"], "revoked_ms": None}]
    for t in resp.json["tokens"]:
        assert set(t) == LISTED_KEYS, t
    for secret in (made["token"], digest(made["token"]), coord.customer_token,
                   digest(coord.customer_token)):
        assert secret not in resp.raw.decode()


def test_an_expired_token_gets_401_saying_so(coord: Coordinator) -> None:
    made = create_token(coord.api(), "short", expires_in_s=1)
    short = Api(coord.url, made["token"])
    refused = wait_until(lambda: short.call("GET", "/api/wallet"), 10,
                         "the 1 s token to expire", ready=lambda r: r.status == 401,
                         watch=(coord,))
    error = refused.json["error"]
    assert "expired" in error and "tn token create" in error, error
    [listed] = [t for t in my_tokens(coord.api()) if t["id"] == made["id"]]
    assert listed["state"] == "expired"


def test_revoking_takes_effect_at_once(coord: Coordinator) -> None:
    me = coord.api()
    made = create_token(me, "to-revoke")
    other = create_token(me, "to-revoke-by-post")
    new = Api(coord.url, made["token"])
    assert new.call("GET", "/api/wallet").status == 200  # now it is in the coordinator's cache
    _, browser = sign_in(coord.url, token=made["token"])  # a browser signed in with it
    assert browser is not None and browser.call("GET", "/api/wallet").status == 200

    revoked = me.ok("DELETE", f"/api/tokens/{made['id']}")

    assert revoked["state"] == "revoked" and revoked["revoked_ms"] >= made["created_ms"]
    refused = new.call("GET", "/api/wallet")
    assert refused.status == 401 and "revoked" in refused.json["error"], refused.raw
    assert browser.call("GET", "/api/wallet").status == 401  # its browser session ended too
    assert me.ok("DELETE", f"/api/tokens/{made['id']}")["revoked_ms"] == revoked["revoked_ms"]
    by_post = send(me, "POST", f"/api/tokens/{other['id']}/revoke")
    assert by_post.status == 200 and by_post.json["state"] == "revoked", by_post.raw
    assert Api(coord.url, other["token"]).call("GET", "/api/wallet").status == 401
    assert me.call("GET", "/api/wallet").status == 200  # the caller's own token is untouched


def test_other_tenants_see_nothing_and_admins_see_all(coord: Coordinator) -> None:
    me, worker, admin = coord.api(), coord.api(coord.worker_token), coord.api(coord.admin_token)
    mine = create_token(me, "mine")

    assert mine["id"] not in {t["id"] for t in my_tokens(worker)}
    assert worker.call("GET", "/api/tokens?account=demo-customer").status == 403
    stolen = worker.call("DELETE", f"/api/tokens/{mine['id']}")
    unknown = worker.call("DELETE", "/api/tokens/tk_000000000000")
    assert (stolen.status, unknown.status) == (404, 404)
    assert stolen.json["error"].replace(mine["id"], "ID") == \
        unknown.json["error"].replace("tk_000000000000", "ID")  # the same answer: no oracle
    assert mine["token"] not in stolen.raw.decode() and "demo-customer" not in stolen.raw.decode()
    assert send(worker, "POST", "/api/tokens", {"label": "x", "account": "demo-customer"}
                ).status == 403
    assert Api(coord.url, mine["token"]).call("GET", "/api/wallet").status == 200

    assert mine["id"] in {t["id"] for t in my_tokens(admin, "?account=demo-customer")}
    issued = send(admin, "POST", "/api/tokens", {"label": "by-admin", "account": "demo-worker"})
    assert issued.status == 201 and issued.json["account"] == "demo-worker", issued.raw
    worker_id = worker.ok("GET", "/api/wallet")["account_id"]
    assert Api(coord.url, issued.json["token"]).ok("GET", "/api/wallet")["account_id"] == \
        worker_id
    assert issued.json["id"] in {t["id"] for t in my_tokens(worker)}
    assert admin.ok("DELETE", f"/api/tokens/{mine['id']}")["state"] == "revoked"
    assert Api(coord.url, mine["token"]).call("GET", "/api/wallet").status == 401
    nobody = send(admin, "POST", "/api/tokens", {"label": "x", "account": "nobody"})
    assert nobody.status == 404 and nobody.json["field"] == "account", nobody.raw
    assert admin.call("GET", "/api/tokens?account=nobody").status == 404


@pytest.mark.parametrize(("body", "field", "says"), [
    ({"label": "x", "expires_in_s": -5}, "expires_in_s", "whole number of seconds"),
    ({"label": "x", "expires_in_s": 0}, "expires_in_s", "whole number of seconds"),
    ({"label": "x", "expires_in_s": 1.5}, "expires_in_s", "whole number of seconds"),
    ({"label": "x", "expires_in_s": 10**30}, "expires_in_s", "TN_TOKEN_LIFETIME_MAX_S"),
    ({"label": "x", "expires_in_s": 365 * 86_400 + 1}, "expires_in_s", "from 1 to 31536000"),
    ({"label": "x", "expires_in_s": "3600"}, "expires_in_s", "whole number of seconds"),
    ({"label": "x", "expires_in_s": True}, "expires_in_s", "whole number of seconds"),
    ({"label": "x" * 101}, "label", "1 to 100 characters"),
    ({"label": ""}, "label", "1 to 100 characters"),
    ({"label": "   "}, "label", "not only spaces"),
    ({"label": "bell\x07\x1b[31m"}, "label", "no control characters"),
    ({"label": 7}, "label", "1 to 100 characters"),
    ({}, "label", "1 to 100 characters"),
    ({"label": "x", "scope": "all"}, "scope", '{"label": "laptop"'),
    ({"label": "x", "account": 5}, "account", "name of an account"),
    ([], None, '{"label": "laptop"'),
])
def test_bad_bodies_get_400_saying_what_to_do(coord: Coordinator, body: object,
                                              field: str | None, says: str) -> None:
    resp = send(coord.api(), "POST", "/api/tokens", body)
    assert resp.status == 400, resp.raw
    assert resp.json["field"] == field and says in resp.json["error"], resp.json


def test_not_json_gets_400(coord: Coordinator) -> None:
    for raw in (b"label=x", b'{"label": "\xff\xfe"}'):  # not JSON; not UTF-8
        resp = coord.api().call("POST", "/api/tokens", raw, "application/json")
        assert resp.status == 400 and "UTF-8 JSON body" in resp.json["error"], resp.raw


def test_a_browser_session_manages_tokens_with_its_csrf_token(coord: Coordinator) -> None:
    _, browser = sign_in(coord.url, name="demo-customer", password="demo")
    assert browser is not None
    refused = browser.call("POST", "/api/tokens", {"label": "from-the-page"}, csrf=False)
    assert refused.status == 403 and "X-CSRF-Token" in refused.json["error"], refused.raw
    made = browser.call("POST", "/api/tokens", {"label": "from-the-page"})
    assert made.status == 201, made.raw
    listed = browser.call("GET", "/api/tokens")
    assert made.json["id"] in {t["id"] for t in listed.json["tokens"]}
    assert browser.call("DELETE", f"/api/tokens/{made.json['id']}", csrf=False).status == 403
    revoked = browser.call("DELETE", f"/api/tokens/{made.json['id']}")
    assert revoked.status == 200 and revoked.json["state"] == "revoked", revoked.raw


def test_every_token_route_is_documented(coord: Coordinator) -> None:
    paths = Api(coord.url, None).ok("GET", "/openapi.json")["paths"]
    for path, method, _ in TOKEN_ROUTES:
        assert method.lower() in paths.get(path, {}), f"{method} {path} is not in openapi.json"


def test_lifetime_and_count_limits_come_from_the_config(cluster: Cluster) -> None:
    coord = cluster.coordinator({**FAST_ENV, "TN_TOKEN_LIFETIME_MAX_S": "60",
                                 "TN_TOKENS_PER_ACCOUNT_MAX": "3"})
    me = coord.api()
    made = create_token(me, "default-lifetime")  # the demo token is the first of three
    assert made["expires_ms"] == made["created_ms"] + 60_000
    too_long = send(me, "POST", "/api/tokens", {"label": "x", "expires_in_s": 61})
    assert too_long.status == 400 and "from 1 to 60" in too_long.json["error"], too_long.raw
    create_token(me, "third", expires_in_s=60)
    full = send(me, "POST", "/api/tokens", {"label": "fourth"})
    assert full.status == 409 and "tn token revoke" in full.json["error"], full.raw
    me.ok("DELETE", f"/api/tokens/{made['id']}")
    create_token(me, "fourth")  # a revoked token no longer counts


# ---- the CLI -------------------------------------------------------------------------------


def test_cli_create_list_revoke(coord: Coordinator) -> None:
    made = tn(coord, coord.customer_token, "token", "create", "--label", "cli", "--expires", "12h")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("tn_") and "\n" not in token  # the token alone on stdout
    assert "only time the token is shown" in made.stderr and "expires" in made.stderr
    token_id = "tk_" + digest(token)[:12]
    assert token_id in made.stderr

    listed = tn(coord, coord.customer_token, "token", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(token_id)]
    assert row.split()[1:3] == ["cli", "active"]
    assert listed.stdout.splitlines()[0].split()[:3] == ["ID", "LABEL", "STATE"]
    assert token not in listed.stdout + listed.stderr
    assert tn(coord, token, "wallet", "balance").returncode == 0  # the new token works

    revoked = tn(coord, coord.customer_token, "token", "revoke", token_id)
    assert revoked.returncode == 0 and f"revoked {token_id} (cli)" in revoked.stdout, revoked
    refused = tn(coord, token, "wallet", "balance")
    assert refused.returncode == 1 and "revoked" in refused.stderr, refused
    other = tn(coord, coord.worker_token, "token", "revoke", token_id)
    assert other.returncode == 1 and "no token" in other.stderr, other


def test_cli_refuses_bad_durations(coord: Coordinator) -> None:
    for bad in ("1.5h", "-3d", "0s", "soon", "12y"):
        done = tn(coord, coord.customer_token, "token", "create", "--label", "x", "--expires", bad)
        assert done.returncode == 2 and "--expires" in done.stderr, (bad, done.stderr)
    days = tn(coord, coord.customer_token, "token", "create", "--label", "days", "--expires",
              "30d", "--json")
    assert days.returncode == 0, days.stderr
    assert '"expires_ms"' in days.stdout and "only time" in days.stderr


def test_cli_admin_issues_and_lists_for_another_account(coord: Coordinator) -> None:
    made = tn(coord, coord.admin_token, "token", "create", "--label", "for-worker", "--account",
              "demo-worker")
    assert made.returncode == 0 and "for demo-worker" in made.stderr, made.stderr
    listed = tn(coord, coord.admin_token, "token", "list", "--account", "demo-worker")
    assert "for-worker" in listed.stdout, listed
    refused = tn(coord, coord.customer_token, "token", "list", "--account", "demo-worker")
    assert refused.returncode == 1 and "only an admin" in refused.stderr, refused


def test_the_listing_puts_live_tokens_first(coord: Coordinator) -> None:
    me = coord.api(coord.worker_token)
    old = create_token(me, "old")
    me.ok("DELETE", f"/api/tokens/{old['id']}")
    create_token(me, "new")
    states = [t["state"] for t in my_tokens(me)]
    assert states == sorted(states, key=lambda s: s != "active"), states


def test_ids_that_are_not_token_ids_get_404(coord: Coordinator) -> None:
    admin = coord.api(coord.admin_token)
    for bad in ("tk_", "tk_ZZZZZZZZZZZZ", "tk_0123456789ab0", "tk_%00", "x" * 300):
        resp = admin.call("DELETE", f"/api/tokens/{bad}")
        assert resp.status == 404 and "tn token list" in resp.json["error"], (bad, resp.raw)
