"""The platform view (admins): connected workers, chunks per second, queue depth, revenue,
and pending withdrawals approved from the browser."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ENV, WORKERS, OpenPage, Stack, shot
from tests.browser.flows import SLOW, items, sign_in_password
from tests.e2e.conftest import _register
from tests.e2e.harness import Cluster, Coordinator
from tests.e2e.stripe_standin import checkout_completed, signature_header

SECRET = "whsec_browser"


def test_platform_view_live(stack: Stack, browser_page: OpenPage) -> None:
    bp = browser_page()
    page = sign_in_password(bp, "demo-admin", landing="#/platform")
    expect(page.get_by_role("heading", name="Platform")).to_be_visible()
    for wid in WORKERS:
        expect(page.locator("#workers tbody")).to_contain_text(wid)
    created = stack.customer.submit(SLOW, items(400), {
        "chunk_size": 4, "max_concurrency": 3, "price_per_chunk": 10, "budget": 1000,
        "name": "platform load"})
    queue_row = page.locator("#queue tbody tr", has_text="platform load")
    expect(queue_row).to_be_visible(timeout=20_000)
    expect(queue_row).to_contain_text("/ 3")  # running of its cap
    # chunks per second comes alive, and so does the revenue
    rate = page.locator(".facts dt", has_text="Chunks per second").locator("xpath=../dd")
    expect(rate).not_to_have_text("0", timeout=20_000)
    expect(rate).not_to_have_text("—")
    revenue = page.locator(".facts dt", has_text="Revenue").locator("xpath=../dd")
    expect(revenue).not_to_have_text("0.00", timeout=20_000)
    shot(page, "platform")
    assert stack.customer.cancel(created["id"]).status == 200
    expect(queue_row).to_be_hidden(timeout=10_000)


@pytest.fixture(scope="module")
def stripe_coordinator(tmp_path_factory: pytest.TempPathFactory,
                       request: pytest.FixtureRequest) -> Iterator[Coordinator]:
    """Sandbox off, Stripe on: withdrawals wait for an admin. (No Checkout is started, so
    the Stripe API is never called; webhooks are signed here.)"""
    cluster = Cluster(tmp_path_factory.mktemp("browser-stripe"))
    _register(request.node, cluster)
    try:
        yield cluster.coordinator({
            **ENV, "WALLET_SANDBOX_ENABLED": "false", "STRIPE_SECRET_KEY": "sk_test_browser",
            "STRIPE_WEBHOOK_SECRET": SECRET, "STRIPE_API_BASE": "http://127.0.0.1:9"})
    finally:
        cluster.close()


def test_approve_a_withdrawal(stripe_coordinator: Coordinator, browser_page: OpenPage) -> None:
    coord = stripe_coordinator
    worker = coord.api(coord.worker_token)
    me = worker.ok("GET", "/api/wallet")["account_id"]
    payload = checkout_completed("evt_browser_1", "cs_browser_1", me, 2500)
    req = urllib.request.Request(coord.url + "/api/stripe/webhook", data=payload, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Stripe-Signature": signature_header(payload, SECRET)})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    asked = worker.ok("POST", "/api/wallet/withdraw", 202, body=b'{"amount": 1500}',
                      content_type="application/json")
    assert asked["state"] == "pending"

    bp = browser_page(url=coord.url)
    page = sign_in_password(bp, "demo-admin", landing="#/platform")
    row = page.locator("#withdrawals tbody tr", has_text="15.00")
    expect(row).to_contain_text(me)
    page.get_by_role("button", name=f"Approve withdrawal {asked['id']}").click()
    expect(page.locator("#toast")).to_contain_text("approved")
    expect(page.locator("#withdrawals tbody")).to_contain_text("None waiting.")
    w = worker.ok("GET", "/api/wallet")
    assert (w["balance"], w["pending_withdrawals"]) == (1000, 0)
    expect(page.locator(".facts dt", has_text="Withdrawn").locator("xpath=../dd")
           ).to_have_text("15.00")
