"""Signing in (token, password), the session cookie, CSRF and the page's security headers."""

from __future__ import annotations

import json
import urllib.request

from playwright.sync_api import expect

from tests.browser.conftest import PHONE, OpenPage, Stack, shot
from tests.browser.flows import sign_in_password, sign_in_token


def test_sign_in_with_a_token(stack: Stack, browser_page: OpenPage) -> None:
    bp = browser_page()
    page = bp.page
    page.goto(bp.base_url + "/")
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    shot(page, "sign-in")
    sign_in_token(bp, stack.coordinator.customer_token)
    expect(page.locator("#who-name")).to_have_text("demo-customer (customer)")
    expect(page.get_by_role("heading", name="Tasks")).to_be_visible()
    cookie, = [c for c in page.context.cookies() if c["name"] == "tn_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain http here; Secure over TLS
    assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read it
    # a reload stays signed in: the cookie, not the token, is the session
    page.reload()
    expect(page.locator("#who-name")).to_have_text("demo-customer (customer)")


def test_sign_in_with_a_password_csrf_and_sign_out(stack: Stack, browser_page: OpenPage) -> None:
    bp = browser_page()
    page = sign_in_password(bp, "demo-worker")
    expect(page.get_by_role("heading", name="Worker")).to_be_visible()
    # the worker sees no customer or admin views
    expect(page.get_by_role("link", name="New task")).to_be_hidden()
    expect(page.get_by_role("link", name="Platform")).to_be_hidden()

    # the cookie alone cannot change anything: a request needs the session's CSRF token
    req = page.context.request
    refused = req.post(bp.base_url + "/api/wallet/deposit", data=json.dumps({"amount": 100}),
                       headers={"Content-Type": "application/json"})
    assert refused.status == 403, refused.text()
    assert "X-CSRF-Token" in refused.json()["error"]
    csrf = req.get(bp.base_url + "/auth/session").json()["csrf"]
    ok = req.post(bp.base_url + "/api/wallet/deposit", data=json.dumps({"amount": 100}),
                  headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
    assert ok.status == 201, ok.text()
    # ... nor may another site's page use it (its Origin is not ours)
    forged = req.post(bp.base_url + "/api/wallet/deposit", data=json.dumps({"amount": 100}),
                      headers={"Content-Type": "application/json", "X-CSRF-Token": csrf,
                               "Origin": "https://evil.example"})
    assert forged.status == 403

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    assert req.get(bp.base_url + "/auth/session").json()["account"] is None


def test_security_headers(stack: Stack) -> None:
    with urllib.request.urlopen(stack.url + "/", timeout=10) as resp:
        headers = resp.headers
        body = resp.read().decode()
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in body and "style=" not in body  # nothing inline
    with urllib.request.urlopen(stack.url + "/healthz", timeout=10) as resp:
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_sign_in_page_at_phone_width(stack: Stack, browser_page: OpenPage) -> None:
    bp = browser_page(PHONE)
    page = bp.page
    page.goto(bp.base_url + "/")
    expect(page.get_by_label("Username")).to_be_focused()  # the keyboard starts there
    page.keyboard.type("demo-customer")
    page.keyboard.press("Tab")
    page.keyboard.type("demo")
    page.keyboard.press("Enter")
    expect(page.locator("#who-name")).to_contain_text("demo-customer")
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1]
