"""Browser tests: Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) driven
by Playwright for Python, against a real ``tn-coordinator`` and real ``tn-worker`` processes
(tests/e2e/harness.py).

One coordinator with two workers (``stack``) and one Chromium (``browser``) serve all the
browser tests; both are package-scoped, so they stop before the rest of the suite runs
(Playwright's sync API holds an event loop on this thread while it runs, which the async
tests elsewhere must not meet). Each test gets a fresh browser context (``browser_page``)
whose console errors and page errors fail the test at teardown. ``shot`` saves screenshots
to test-artifacts/browser/; with ``TN_UPDATE_SCREENSHOTS=1`` they are also copied to
docs/screenshots/ for the README.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _register
from tests.e2e.conftest import pytest_runtest_makereport as pytest_runtest_makereport
from tests.e2e.harness import FAST_ENV, Cluster, Coordinator, Worker
from tests.e2e.rest import Api

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
SCREENSHOTS = REPO / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
INITIAL = 100_000  # DEV_INITIAL_WALLET: 1,000.00 credits per account
ENV = {**FAST_ENV, "DEV_INITIAL_WALLET": str(INITIAL), "WALLET_SANDBOX_ENABLED": "true",
       "PLATFORM_FEE_PERCENT": "10"}
WORKERS = ("browser-w1", "browser-w2")

@dataclass
class Stack:
    coordinator: Coordinator
    workers: list[Worker]
    customer: Api
    worker: Api
    admin: Api

    @property
    def url(self) -> str:
        return self.coordinator.url


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
          ) -> Iterator[Stack]:
    cluster = Cluster(tmp_path_factory.mktemp("browser-cluster"))
    _register(request.node, cluster)
    try:
        coord = cluster.coordinator(ENV)
        workers = [cluster.worker(coord, wid, slots=2, wait=False) for wid in WORKERS]
        for w in workers:
            w.wait_connected()
        yield Stack(coord, workers, coord.api(), coord.api(coord.worker_token),
                    coord.api(coord.admin_token))
    finally:
        cluster.close()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (`make chromium` installs Debian's package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Console:
    """What a page logged: every console message, and the errors among them."""

    messages: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)  # substrings of expected errors

    def on_console(self, msg: Any) -> None:
        text = f"{msg.type}: {msg.text}"
        self.messages.append(text)
        if msg.type == "error":
            self.errors.append(text)

    def on_error(self, exc: Any) -> None:
        self.errors.append(f"page error: {exc}")

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]


@dataclass
class BrowserPage:
    page: Any
    console: Console
    base_url: str


OpenPage = Callable[..., BrowserPage]


@pytest.fixture
def browser_page(browser: Any, stack: Stack) -> Iterator[OpenPage]:
    """``open(viewport=DESKTOP, url=stack.url)``: a page in a fresh context; at teardown,
    anything it logged as an error fails the test."""
    made: list[tuple[Any, Console]] = []

    def open_page(viewport: dict[str, int] = DESKTOP, url: str | None = None) -> BrowserPage:
        context = browser.new_context(viewport=viewport, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        console = Console()
        page.on("console", console.on_console)
        page.on("pageerror", console.on_error)
        made.append((context, console))
        return BrowserPage(page, console, url or stack.url)

    yield open_page
    problems = []
    for context, console in made:
        problems += console.unexpected()
        context.close()
    assert not problems, "the page logged errors:\n" + "\n".join(problems)


def shot(page: Any, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("TN_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)
    return path
