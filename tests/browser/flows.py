"""Steps the browser tests share: signing in, reading what the page shows, waiting on it."""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import BrowserPage

SLOW = """\
import time


def process(item):
    time.sleep(0.03)
    return {"n": item["n"], "square": item["n"] * item["n"]}
"""
NOOP = "def process(item):\n    return item\n"


def items(n: int) -> bytes:
    return json.dumps([{"n": i} for i in range(n)]).encode()


def sign_in_password(bp: BrowserPage, name: str, password: str = "demo",
                     landing: str = "") -> Any:
    page = bp.page
    page.goto(bp.base_url + "/")
    page.get_by_label("Username").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.locator("#signin-password").get_by_role("button", name="Sign in").click()
    expect(page.locator("#who-name")).to_contain_text(name)
    if landing:
        page.goto(bp.base_url + "/" + landing)
    return page


def sign_in_token(bp: BrowserPage, token: str) -> Any:
    page = bp.page
    page.goto(bp.base_url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in with token").click()
    expect(page.locator("#who")).to_be_visible()
    return page


def money_text(units: int) -> str:
    """As the page shows an amount (1234 -> "12.34", with thousands separators)."""
    return f"{units // 100:,}.{units % 100:02d}"


def parse_money(text: str) -> int:
    whole, _, cents = text.strip().replace(",", "").replace("\u2212", "-").partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole)) * 100 + int(cents or 0))


def pixel(page: Any, selector: str, x: int, y: int) -> list[int]:
    """The RGBA of a canvas at css pixel (x, y)."""
    rgba: list[int] = page.evaluate(
        """([sel, x, y]) => { const c = document.querySelector(sel);
             const k = c.width / c.clientWidth;
             return Array.from(c.getContext('2d').getImageData(Math.floor(x * k),
                                 Math.floor(y * k), 1, 1).data); }""", [selector, x, y])
    return rgba
