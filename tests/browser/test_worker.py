"""The worker's view: its live sessions, what they run, and earnings that grow as it works."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.conftest import WORKERS, OpenPage, Stack, shot
from tests.browser.flows import SLOW, items, parse_money, sign_in_password


def test_sessions_and_earnings_change_live(stack: Stack, browser_page: OpenPage) -> None:
    bp = browser_page()
    page = sign_in_password(bp, "demo-worker", landing="#/worker")
    for wid in WORKERS:
        expect(page.locator(f"article[data-worker={wid}]")).to_be_visible()
    total = page.locator("#earned-total")
    expect(total).not_to_have_text("—")
    before = parse_money(total.inner_text())

    created = stack.customer.submit(SLOW, items(240), {
        "chunk_size": 4, "max_concurrency": 4, "price_per_chunk": 20, "budget": 1200,
        "name": "pays the workers"})
    # the sessions show what they run, live ...
    expect(page.locator("#sessions table.running tbody tr").first).to_be_visible(timeout=20_000)
    expect(page.locator("#sessions")).to_contain_text(created["id"])
    shot(page, "worker")
    # ... and the earnings grow without a reload
    expect(total).not_to_have_text(total.inner_text(), timeout=20_000)
    stack.customer.wait_state(created["id"], timeout_s=60)
    # 60 chunks at 0.20, 10 % to the platform: 0.18 each to the workers
    expect(total).to_have_text(f"{(before + 60 * 18) // 100:,}.{(before + 60 * 18) % 100:02d}",
                               timeout=10_000)
    row = page.locator("#earnings tbody tr", has_text=created["id"])
    expect(row).to_contain_text("60")
    expect(page.locator("#latest tbody tr").first).to_contain_text(created["id"])
    # idle again: each session says why
    expect(page.locator("#sessions .idle").first).to_contain_text("Idle. Why:")
