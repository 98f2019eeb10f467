"""A token's expiry bounds everything it opens: the tokens it mints (clamped to its own
expiry), the browser sessions signed in with it, and the worker and live sockets opened with it
(closed 1008 when it expires); ``tn-coordinator user add --token`` gives the configured
lifetime; and refusals say whether a token was revoked, expired or unknown, and what to do.

Short-lived tokens here live a few seconds: the tests wait for their end on conditions, and
never assert how long anything took.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import urllib.request
from typing import Any

import pytest
from websockets.asyncio.client import connect

from schema import worker as w
from tests.e2e.harness import BIN, FAST_ENV, Cluster, Coordinator
from tests.e2e.rest import Api
from tests.e2e.waiting import wait_until
from tests.e2e.wire import session
from tests.security.test_limits_e2e import QUIET, live, subscribe, until_closed
from tests.security.token_steps import clean_env, create_token, my_tokens, send, sign_in

CLOSE_POLICY = 1008
DAY_MS = 86_400_000
BRIEF_S = 5  # the lifetime of a token that expires during a test


@pytest.fixture(scope="module")
def coord(module_cluster: Cluster) -> Coordinator:
    return module_cluster.coordinator(FAST_ENV)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def web_session_expiry(coord: Coordinator, token: str) -> list[int]:
    """The expiry of each browser session signed in with ``token`` (the database, read-only)."""
    db = sqlite3.connect(f"file:{coord.data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True,
                         timeout=10)
    try:
        rows = db.execute("SELECT expires_ms FROM web_sessions WHERE token_hash = ?",
                          (digest(token),)).fetchall()
    finally:
        db.close()
    return [int(r[0]) for r in rows]


def sign_in_cookie_header(coord: Coordinator, token: str) -> str:
    """``POST /auth/signin`` with ``token``: the whole Set-Cookie header."""
    req = urllib.request.Request(coord.url + "/auth/signin", method="POST",
                                 data=json.dumps({"token": token}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.headers["Set-Cookie"])


async def hello_refusal(coord: Coordinator, token: str) -> str:
    """Say hello with ``token``: the fatal error's reason (the session is then closed 1008)."""
    async with session(coord) as peer:
        await peer.send(w.Hello("refused", token))
        code, got = await peer.until_closed(timeout_s=15)
    assert code == CLOSE_POLICY and len(got) == 1 and isinstance(got[0], w.Error), got
    assert got[0].fatal
    return got[0].reason


# ---- minting ---------------------------------------------------------------------------


def test_a_token_cannot_mint_one_that_outlives_it(coord: Coordinator) -> None:
    me = coord.api()
    parent = create_token(me, "parent", expires_in_s=600)
    child_api = Api(coord.url, parent["token"])
    asked_none = create_token(child_api, "asked-none")
    asked_longer = create_token(child_api, "asked-longer", expires_in_s=30 * 86_400)
    asked_shorter = create_token(child_api, "asked-shorter", expires_in_s=60)
    assert asked_none["expires_ms"] == parent["expires_ms"]  # clamped, not refused
    assert asked_longer["expires_ms"] == parent["expires_ms"]
    assert asked_shorter["expires_ms"] == asked_shorter["created_ms"] + 60_000
    grandchild = create_token(Api(coord.url, asked_none["token"]), "grandchild")
    assert grandchild["expires_ms"] == parent["expires_ms"]
    listed = {t["id"]: t["expires_ms"] for t in my_tokens(me)}
    assert listed[asked_longer["id"]] == parent["expires_ms"]  # as stored, not just as said

    _, browser = sign_in(coord.url, token=parent["token"])  # a browser signed in with it
    assert browser is not None
    by_page = browser.call("POST", "/api/tokens", {"label": "by-page", "expires_in_s": 86_400})
    assert by_page.status == 201 and by_page.json["expires_ms"] == parent["expires_ms"], \
        by_page.raw

    admin_parent = create_token(coord.api(coord.admin_token), "admin-parent", expires_in_s=900)
    for_worker = send(Api(coord.url, admin_parent["token"]), "POST", "/api/tokens",
                      {"label": "for-worker", "account": "demo-worker"})
    assert for_worker.status == 201, for_worker.raw
    assert for_worker.json["expires_ms"] == admin_parent["expires_ms"]

    # a password sign-in, or a token with the longest lifetime, bounds nothing shorter
    _, by_password = sign_in(coord.url, name="demo-customer", password="demo")
    assert by_password is not None
    long = by_password.call("POST", "/api/tokens", {"label": "long", "expires_in_s": 86_400})
    assert long.status == 201 and long.json["expires_ms"] == long.json["created_ms"] + DAY_MS


# ---- browser sessions ------------------------------------------------------------------


def test_a_token_sign_in_ends_when_the_token_expires(coord: Coordinator) -> None:
    brief = create_token(coord.api(), "brief-sign-in", expires_in_s=BRIEF_S)
    set_cookie = sign_in_cookie_header(coord, brief["token"])
    max_age = int(set_cookie.lower().split("max-age=", 1)[1].split(";", 1)[0])
    assert 0 <= max_age <= BRIEF_S, set_cookie
    assert web_session_expiry(coord, brief["token"]) == [brief["expires_ms"]]

    _, browser = sign_in(coord.url, token=brief["token"])
    assert browser is not None
    ended = wait_until(lambda: browser.call("GET", "/api/wallet"), 30,
                       "the browser session to end with its token",
                       ready=lambda r: r.status == 401, watch=(coord,))
    assert "sign in again" in ended.json["error"], ended.raw
    assert browser.call("GET", "/auth/session").json["account"] is None


# ---- tn-coordinator user add --token ----------------------------------------------------


def test_user_add_gives_its_token_the_configured_lifetime(cluster: Cluster) -> None:
    coord = cluster.coordinator(FAST_ENV, start=False)
    printed = {}
    for name, env in (("hour", {"TN_TOKEN_LIFETIME_MAX_S": "3600"}), ("default", {})):
        done = subprocess.run(
            [str(BIN / "tn-coordinator"), "user", "add", name, "--role", "customer", "--token",
             "--data-dir", str(coord.data_dir)],
            capture_output=True, text=True, timeout=60, env=clean_env(**env))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        [token] = [line.split(": ", 1)[1] for line in lines if line.startswith("token: ")]
        [expiry] = [line for line in lines if "expires at" in line]
        printed[name] = (token, expiry)
    assert "TN_TOKEN_LIFETIME_MAX_S=3600" in printed["hour"][1]
    assert "TN_TOKEN_LIFETIME_MAX_S=31536000" in printed["default"][1]
    coord.start()
    for name, lifetime_ms in (("hour", 3_600_000), ("default", 365 * DAY_MS)):
        [row] = my_tokens(Api(coord.url, printed[name][0]))
        assert row["label"] == "user add" and row["state"] == "active"
        assert row["expires_ms"] == row["created_ms"] + lifetime_ms, (name, row)


# ---- sockets ----------------------------------------------------------------------------


async def test_sockets_close_when_their_token_expires(cluster: Cluster) -> None:
    coord = cluster.coordinator(QUIET)
    for_worker = create_token(coord.api(coord.worker_token), "brief-worker",
                              expires_in_s=BRIEF_S)
    for_live = create_token(coord.api(), "brief-live", expires_in_s=BRIEF_S)
    for_page = create_token(coord.api(), "brief-page", expires_in_s=BRIEF_S)
    _, browser = sign_in(coord.url, token=for_page["token"])
    assert browser is not None
    page_headers = {"Cookie": browser.cookie, "Origin": coord.url}
    async with session(coord, "brief", token=for_worker["token"]) as peer, \
            live(coord, for_live["token"]) as watcher, \
            connect(coord.ws_url + "/ws/live", additional_headers=page_headers) as page, \
            live(coord, coord.customer_token) as kept:
        for ws in (watcher, page, kept):
            assert (await subscribe(ws, "wallet"))["type"] == "wallet"
        code, _ = await peer.until_closed(timeout_s=30)
        reason = peer.ws.close_reason or ""
        assert code == CLOSE_POLICY and reason.startswith("token expired at "), reason
        assert reason.endswith("get a new token (tn token create)"), reason
        frames = await until_closed(watcher, timeout_s=30)
        assert frames[-1]["type"] == "error", frames
        assert frames[-1]["reason"].startswith("token expired at "), frames[-1]
        assert watcher.close_code == CLOSE_POLICY
        frames = await until_closed(page, timeout_s=30)
        assert frames[-1]["type"] == "error" and "sign in again" in frames[-1]["reason"], frames
        assert page.close_code == CLOSE_POLICY
        assert (await subscribe(kept, "workers"))["type"] == "workers"  # a long token: open


# ---- refusals that say what happened ---------------------------------------------------


async def test_refusals_say_revoked_expired_or_unknown_and_what_to_do(
    coord: Coordinator,
) -> None:
    me = coord.api()
    revoked = create_token(me, "to-revoke")
    me.ok("DELETE", f"/api/tokens/{revoked['id']}")
    expired = create_token(me, "to-expire", expires_in_s=1)
    wait_until(lambda: Api(coord.url, expired["token"]).call("GET", "/api/wallet").status,
               30, "the 1 s token to expire", ready=lambda s: s == 401, watch=(coord,))
    cases: dict[str, tuple[str, ...]] = {
        revoked["token"]: ("this token was revoked at ", "tn token create"),
        expired["token"]: ("this token expired at ", "tn token create"),
        "tn_made_up": ("unknown token", "ask an admin"),
    }
    for token, says in cases.items():
        hello = await hello_refusal(coord, token)
        resp, browser = sign_in(coord.url, token=token)
        assert browser is None and resp.status == 401, resp.raw
        page: dict[str, Any] = resp.json
        assert page["field"] == "token"
        for text in says:
            assert text in hello, (token, hello)
            assert text in page["error"], (token, page)
    assert "--token or TN_TOKEN" in await hello_refusal(coord, "tn_made_up")
    assert "check the token pasted" in sign_in(coord.url, token="tn_made_up")[0].json["error"]

