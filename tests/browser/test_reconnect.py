"""A lost connection: the page shows a banner, reconnects with backoff when the coordinator
is back, resynchronises from the snapshots, and goes on updating without a reload."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ENV, OpenPage
from tests.browser.flows import sign_in_password
from tests.e2e.conftest import _register
from tests.e2e.harness import Cluster, Coordinator

# what Chromium logs while the coordinator is down: expected here, and only here
DOWN = ("WebSocket connection to", "ERR_CONNECTION_REFUSED", "Failed to load resource")


@pytest.fixture
def own_coordinator(tmp_path_factory: pytest.TempPathFactory,
                    request: pytest.FixtureRequest) -> Iterator[Coordinator]:
    cluster = Cluster(tmp_path_factory.mktemp("browser-restart"))
    _register(request.node, cluster)
    try:
        yield cluster.coordinator(ENV)
    finally:
        cluster.close()


def test_banner_reconnect_and_resync(own_coordinator: Coordinator,
                                     browser_page: OpenPage) -> None:
    coord = own_coordinator
    bp = browser_page(url=coord.url)
    bp.console.allowed.extend(DOWN)
    page = sign_in_password(bp, "demo-customer", landing="#/wallet")
    balance = page.locator("#balance")
    expect(balance).to_have_text("1,000.00")
    banner = page.locator("#banner")
    expect(banner).to_be_hidden()

    coord.stop()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Reconnecting in")
    # while it is down, money moves (a deposit through the API once it is back)
    coord.start()
    coord.api().ok("POST", "/api/wallet/deposit", 201, body=b'{"amount": 500}',
                   content_type="application/json")
    expect(banner).to_contain_text("Reconnected", timeout=20_000)
    # the wallet snapshot after the reconnect brings the deposit made meanwhile
    expect(balance).to_have_text("1,005.00")
    expect(page.locator("#transactions tbody tr").first).to_contain_text("+5.00")
    expect(banner).to_be_hidden(timeout=10_000)


@pytest.fixture
def capped_coordinator(tmp_path_factory: pytest.TempPathFactory,
                       request: pytest.FixtureRequest) -> Iterator[Coordinator]:
    """One live session per account: a second dashboard of the same account is over it."""
    cluster = Cluster(tmp_path_factory.mktemp("browser-capped"))
    _register(request.node, cluster)
    try:
        yield cluster.coordinator({**ENV, "TN_LIVE_SESSIONS_PER_ACCOUNT_MAX": "1"})
    finally:
        cluster.close()


def test_a_limit_shows_its_reason_and_keeps_the_sign_in(capped_coordinator: Coordinator,
                                                        browser_page: OpenPage) -> None:
    coord = capped_coordinator
    first = browser_page(url=coord.url)
    page = sign_in_password(first, "demo-customer", landing="#/wallet")
    expect(page.locator("#balance")).to_have_text("1,000.00")
    # a second tab of the same browser (same cookie): its live socket is over the cap
    second = page.context.new_page()
    second.goto(coord.url + "/#/wallet")
    banner = second.locator("#banner")
    expect(banner).to_contain_text("too many live sessions")
    expect(banner).to_contain_text("Reconnecting in")
    assert "signin" not in second.url  # still signed in: only the limit was hit
    second.close()
    expect(page.locator("#banner")).to_be_hidden()
