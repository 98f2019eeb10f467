"""The customer's dashboard: create a task through the form, watch it to 100 %, download
its results, steer it (pause, resume, cap, priority, cancel), top it up, use the wallet."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import PHONE, OpenPage, Stack, shot
from tests.browser.flows import (
    SLOW,
    items,
    money_text,
    parse_money,
    pixel,
    sign_in_password,
)
from tests.e2e.waiting import wait_until

GREEN = [22, 163, 74, 255]  # a done chunk's cell


def field_error(page, label: str):  # type: ignore[no-untyped-def]
    return page.locator(".field", has=page.get_by_label(label, exact=True)).locator(".field-error")


def test_create_through_the_form_watch_it_finish_and_download(
        stack: Stack, browser_page: OpenPage) -> None:
    bp = browser_page()
    page = sign_in_password(bp, "demo-customer", landing="#/new")
    form = page.locator("#new-task")
    for el in form.locator("input, select, textarea").all():  # every field has its label
        assert el.evaluate("e => e.labels.length") > 0, el.evaluate("e => e.outerHTML")

    # mistakes are shown next to their fields, and nothing is sent
    page.get_by_label("Price per chunk (credits)").fill("0.123")
    page.get_by_role("button", name="Create task").click()
    expect(field_error(page, "Code")).to_have_text("Choose the code file.")
    expect(field_error(page, "Data")).to_have_text("Choose the data file.")
    expect(field_error(page, "Price per chunk (credits)")).to_contain_text("two decimals")
    expect(page.get_by_label("Code", exact=True)).to_be_focused()
    shot(page, "new-task-validation")

    page.get_by_label("Name").fill("squares in the browser")
    page.get_by_label("Code", exact=True).set_input_files(
        {"name": "main.py", "mimeType": "text/x-python", "buffer": SLOW.encode()})
    page.get_by_label("Data", exact=True).set_input_files(
        {"name": "numbers.json", "mimeType": "application/json", "buffer": items(300)})
    page.get_by_label("Items per chunk").fill("5")
    page.get_by_label("Budget (credits)").fill("20.00")
    page.get_by_label("Price per chunk (credits)").fill("0.10")
    page.get_by_label("Concurrency cap (bucket slots)").fill("4")
    page.get_by_label("Priority").select_option("7")
    page.get_by_role("button", name="Create task").click()

    expect(page).to_have_url(re.compile(r"#/tasks/t_[0-9a-f]+$"))
    task_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name="squares in the browser")).to_be_visible()
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^[1-9]\d?(\.\d)?% "),
                                                       timeout=30_000)
    expect(page.locator("#assignments tbody tr").first).to_be_visible()
    shot(page, "task-running")
    expect(page.locator(".head .badge")).to_have_text("completed", timeout=60_000)
    expect(page.locator("#progress-text")).to_contain_text("100% · 60 of 60 chunks")
    expect(page.locator("[data-count=done]")).to_have_text("60")
    # the grid shows every chunk done: its first and last cells are green
    box = page.locator("canvas.grid").bounding_box()
    assert box is not None
    expect_pixel = lambda x, y: wait_until(  # noqa: E731
        lambda: pixel(page, "canvas.grid", x, y), 10, f"grid pixel ({x},{y}) green",
        ready=lambda rgba: rgba == GREEN)
    expect_pixel(2, 2)
    info = stack.customer.task(task_id)
    assert (info["priority"], info["max_concurrency"], info["price_per_chunk"],
            info["budget"]) == (7, 4, 10, 2000)

    # keyboard: the grid is focusable and tells the chunk under the cursor
    page.locator("canvas.grid").focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator(".grid-box .sr-only")).to_have_text(re.compile(r"^Chunk 1: done"))

    with page.expect_download() as dl:
        page.get_by_role("link", name="Download results (JSON)").click()
    results = json.loads(Path(dl.value.path()).read_text())
    assert len(results) == 300 and results[7] == {"n": 7, "square": 49}
    shot(page, "task-completed")

    page.get_by_role("link", name="Tasks", exact=True).click()
    row = page.locator(f"tr[data-task={task_id}]")
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text("100%")
    shot(page, "task-list")


def test_pause_resume_cap_priority_cancel(stack: Stack, browser_page: OpenPage) -> None:
    created = stack.customer.submit(SLOW, items(3000), {"chunk_size": 5, "max_concurrency": 2,
                                                       "name": "steered"})
    bp = browser_page()
    page = sign_in_password(bp, "demo-customer", landing=f"#/tasks/{created['id']}")
    badge = page.locator(".head .badge")
    expect(badge).to_have_text("running")
    page.get_by_role("button", name="Pause").click()
    expect(badge).to_have_text("paused")
    expect(page.get_by_text("No chunk is running right now.")).to_be_visible()
    assert stack.customer.task(created["id"])["state"] == "paused"
    page.get_by_role("button", name="Resume").click()
    expect(badge).to_have_text("running")
    expect(page.locator("#assignments tbody tr").first).to_be_visible()

    page.get_by_label("Concurrency cap").fill("3")
    page.get_by_role("button", name="Set cap").click()
    expect(page.locator("#slots-text")).to_contain_text("of 3 slots in use")
    page.get_by_label("Priority").select_option("9")
    page.get_by_role("button", name="Set priority").click()
    wait_until(lambda: stack.customer.task(created["id"]), 10, "priority 9 and cap 3",
               ready=lambda t: (t["priority"], t["max_concurrency"]) == (9, 3))

    page.get_by_role("button", name="Cancel…").click()
    page.get_by_role("button", name="Yes, cancel it").click()
    expect(badge).to_have_text("cancelled")
    assert stack.customer.task(created["id"])["state"] == "cancelled"


def test_top_up_a_task_and_use_the_wallet(stack: Stack, browser_page: OpenPage) -> None:
    # 40 chunks at 0.10, funded for 10: it stops for money until topped up
    created = stack.customer.submit(SLOW, items(200), {
        "chunk_size": 5, "max_concurrency": 4, "price_per_chunk": 10, "budget": 100,
        "name": "needs a top-up"})
    bp = browser_page()
    page = sign_in_password(bp, "demo-customer", landing=f"#/tasks/{created['id']}")
    expect(page.get_by_text("Waiting for funds")).to_be_visible(timeout=30_000)
    before = stack.customer.ok("GET", "/api/wallet")["balance"]
    page.get_by_label("Top up (credits)").fill("5.00")
    page.get_by_role("button", name="Top up").click()
    expect(page.locator("#toast")).to_contain_text("Added 5.00 credits")
    expect(page.get_by_text("Waiting for funds")).to_be_hidden()
    expect(page.locator(".head .badge")).to_have_text("completed", timeout=60_000)
    # paid 40 chunks in all; the 2.00 left over went back to the wallet
    assert stack.customer.ok("GET", "/api/wallet")["balance"] == before - 300

    page.get_by_role("link", name="Wallet").click()
    balance = page.locator("#balance")
    expect(balance).to_have_text(money_text(before - 300))
    page.get_by_label("Deposit amount (credits)").fill("25.00")
    page.get_by_role("button", name="Deposit", exact=True).click()
    expect(balance).to_have_text(money_text(before - 300 + 2500))
    expect(page.locator("#transactions tbody tr").first).to_contain_text("+25.00")
    page.get_by_label("Withdraw amount (credits)").fill("abc")
    page.get_by_role("button", name="Withdraw", exact=True).click()
    expect(page.locator("#withdraw-form .field-error")).to_contain_text("An amount above zero")
    page.get_by_label("Withdraw amount (credits)").fill("10.00")
    page.get_by_role("button", name="Withdraw", exact=True).click()
    expect(balance).to_have_text(money_text(before - 300 + 1500))
    expect(page.locator("#transactions tbody tr").first).to_contain_text("Withdrawal")
    assert parse_money(balance.inner_text()) == stack.customer.ok(
        "GET", "/api/wallet")["balance"]
    shot(page, "wallet")


def test_phone_width(stack: Stack, browser_page: OpenPage) -> None:
    bp = browser_page(PHONE)
    page = sign_in_password(bp, "demo-customer")
    task_id = stack.customer.tasks()[0]["id"]
    for where in ("#/tasks", f"#/tasks/{task_id}", "#/new", "#/wallet"):
        page.goto(f"{bp.base_url}/{where}")
        expect(page.locator("main h1")).to_be_visible()
        page.wait_for_timeout(300)  # the grid lays itself out on the next frame
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{where} scrolls sideways at phone width: {width}"
    page.goto(f"{bp.base_url}/#/tasks/{task_id}")
    expect(page.locator("canvas.grid")).to_be_visible()
    shot(page, "phone-task")
